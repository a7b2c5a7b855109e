//! What the gateways can act on in a Security Event Token: the CAEP and RISC event types
//! and their effect, and the user and session an RFC 9493 subject identifier names.

use serde_json::Value;

use super::{invalid, SetError};
use crate::config::ssf::{SubFormat, TransmitterConfig};
use crate::revocation::{claim_value, Kind};

pub(super) const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
pub(super) const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
pub(super) const VERIFICATION: &str =
    "https://schemas.openid.net/secevent/ssf/event-type/verification";

/// What an event type does to the subject it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    /// The session when the subject names one, else every token of the user until the event.
    Session,
    /// Every token of the user issued until the event.
    User,
    /// Nothing the gateways hold depends on it.
    None,
}

/// Event types by name (after the CAEP or RISC prefix): the metric label and the effect.
const EVENTS: &[(&str, &str, Effect)] = &[
    (CAEP, "session-revoked", Effect::Session),
    (CAEP, "credential-change", Effect::User),
    (CAEP, "token-claims-change", Effect::User),
    (CAEP, "assurance-level-change", Effect::None),
    (CAEP, "device-compliance-change", Effect::None),
    (CAEP, "session-established", Effect::None),
    (CAEP, "session-presented", Effect::None),
    (CAEP, "risk-level-change", Effect::None),
    (RISC, "account-disabled", Effect::User),
    (RISC, "account-purged", Effect::User),
    (RISC, "credential-compromise", Effect::User),
    (RISC, "sessions-revoked", Effect::User),
    (RISC, "account-credential-change-required", Effect::User),
    (RISC, "account-enabled", Effect::None),
    (RISC, "identifier-changed", Effect::None),
    (RISC, "identifier-recycled", Effect::None),
    (RISC, "opt-in", Effect::None),
    (RISC, "opt-out-initiated", Effect::None),
    (RISC, "opt-out-cancelled", Effect::None),
    (RISC, "opt-out-effective", Effect::None),
    (RISC, "recovery-activated", Effect::None),
    (RISC, "recovery-information-changed", Effect::None),
];

/// The metric label and effect of an event type URI; unknown types are `other`, ignored.
pub(super) fn event_type(uri: &str) -> (&'static str, Effect) {
    if uri == VERIFICATION {
        return ("verification", Effect::None);
    }
    EVENTS
        .iter()
        .find(|(prefix, name, _)| uri.strip_prefix(prefix) == Some(name))
        .map_or(("other", Effect::None), |(_, name, effect)| (name, *effect))
}

/// A subject's text field (`check_fields` holds it to the API's field rules later).
fn field(s: &serde_json::Map<String, Value>, name: &str, what: &str) -> Result<String, SetError> {
    s.get(name)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| SetError::InvalidRequest(format!("the {what} lacks `{name}`")))
}

/// What a subject identifier names that the gateways can revoke by.
pub(super) struct Subject {
    /// The user: by `sub`, or by another claim ([`Kind::Claim`], its key value) — each
    /// identifier of it that maps, when `aliases` names several.
    pub users: Vec<(Kind, String)>,
    pub session: Option<String>,
}

/// The user (`sub`, or the claim `subject_claims` names) and session (`sid`) an RFC 9493
/// subject identifier names, as far as the gateways can revoke by them.
pub(super) fn subject(tx: &TransmitterConfig, s: &Value) -> Result<Subject, SetError> {
    let s = s
        .as_object()
        .ok_or_else(|| invalid("the subject is not an object"))?;
    let text = |name: &str| field(s, name, "subject");
    // A format's value is `sub` when `sub_formats` says so, else the claim
    // `subject_claims` names for it, else nothing the gateways hold.
    let user_by = |format: SubFormat, v: String| {
        if tx.sub_formats.contains(&format) {
            return Some((Kind::Sub, v));
        }
        tx.subject_claims
            .iter()
            .find(|(f, _)| *f == format)
            .map(|(_, claim)| (Kind::Claim, claim_value(claim, &v)))
    };
    let format = s.get("format").and_then(Value::as_str).unwrap_or_default();
    let user = match format {
        "iss_sub" => {
            let (iss, sub) = (text("iss")?, text("sub")?);
            (iss == tx.subjects_iss).then_some((Kind::Sub, sub))
        }
        "opaque" => user_by(SubFormat::Opaque, text("id")?),
        "email" => user_by(SubFormat::Email, text("email")?),
        "phone_number" => user_by(SubFormat::PhoneNumber, text("phone_number")?),
        "complex" => {
            let users = match s.get("user") {
                // A user the gateways cannot match (another issuer's) puts the whole
                // subject outside this transmitter's reach, its session included.
                Some(u) => match subject(tx, u)?.users {
                    none if none.is_empty() => {
                        return Ok(Subject {
                            users: none,
                            session: None,
                        })
                    }
                    found => found,
                },
                None => Vec::new(),
            };
            let session = match s.get("session") {
                Some(Value::Object(sess))
                    if sess.get("format").and_then(Value::as_str) == Some("opaque") =>
                {
                    Some(field(sess, "id", "session subject")?)
                }
                Some(_) => return Err(invalid("a session subject must have the opaque format")),
                None => None,
            };
            return Ok(Subject { users, session });
        }
        "aliases" => {
            let list = s
                .get("identifiers")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("aliases without identifiers"))?;
            // Every identifier that maps: tokens may carry one and not another (an access
            // token without `email`), and revoking by each can only revoke more.
            let mut users = Vec::new();
            for alias in list {
                for user in subject(tx, alias)?.users {
                    if !users.contains(&user) {
                        users.push(user);
                    }
                }
            }
            return Ok(Subject {
                users,
                session: None,
            });
        }
        "" => return Err(invalid("the subject has no format")),
        // `account`, `did`, `uri`: nothing the gateways can match.
        _ => None,
    };
    Ok(Subject {
        users: user.into_iter().collect(),
        session: None,
    })
}
