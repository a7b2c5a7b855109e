//! What the gateways can act on in a Security Event Token: the CAEP and RISC event types
//! and their effect, and the user and session an RFC 9493 subject identifier names.

use serde_json::Value;

use super::{invalid, SetError};
use crate::config::ssf::{SubFormat, TransmitterConfig};

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

/// What a subject identifier names that the gateways can revoke by.
pub(super) struct Subject {
    pub user: Option<String>,
    pub session: Option<String>,
}

/// The user (`sub`) and session (`sid`) an RFC 9493 subject identifier names, as far as
/// the gateways can revoke by them.
pub(super) fn subject(tx: &TransmitterConfig, s: &Value) -> Result<Subject, SetError> {
    let s = s
        .as_object()
        .ok_or_else(|| invalid("the subject is not an object"))?;
    let text = |name: &str| {
        s.get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| SetError::InvalidRequest(format!("the subject lacks `{name}`")))
    };
    let format = s.get("format").and_then(Value::as_str).unwrap_or_default();
    let user = match format {
        "iss_sub" => {
            let (iss, sub) = (text("iss")?, text("sub")?);
            (iss == tx.subjects_iss).then_some(sub)
        }
        "opaque" => {
            let v = text("id")?;
            tx.sub_formats.contains(&SubFormat::Opaque).then_some(v)
        }
        "email" => {
            let v = text("email")?;
            tx.sub_formats.contains(&SubFormat::Email).then_some(v)
        }
        "phone_number" => {
            let v = text("phone_number")?;
            tx.sub_formats
                .contains(&SubFormat::PhoneNumber)
                .then_some(v)
        }
        "complex" => {
            let user = match s.get("user") {
                // A user the gateways cannot match (another issuer's) puts the whole
                // subject outside this transmitter's reach, its session included.
                Some(u) => match subject(tx, u)?.user {
                    None => {
                        return Ok(Subject {
                            user: None,
                            session: None,
                        })
                    }
                    found => found,
                },
                None => None,
            };
            let session = match s.get("session") {
                Some(Value::Object(sess))
                    if sess.get("format").and_then(Value::as_str) == Some("opaque") =>
                {
                    Some(
                        sess.get("id")
                            .and_then(Value::as_str)
                            .filter(|v| !v.is_empty())
                            .ok_or_else(|| invalid("the session subject lacks `id`"))?
                            .to_owned(),
                    )
                }
                Some(_) => return Err(invalid("a session subject must have the opaque format")),
                None => None,
            };
            return Ok(Subject { user, session });
        }
        "aliases" => {
            let list = s
                .get("identifiers")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("aliases without identifiers"))?;
            let mut user = None;
            for alias in list {
                if user.is_none() {
                    user = subject(tx, alias)?.user;
                }
            }
            user
        }
        "" => return Err(invalid("the subject has no format")),
        // `account`, `did`, `uri`: nothing the gateways can match.
        _ => None,
    };
    Ok(Subject {
        user,
        session: None,
    })
}
