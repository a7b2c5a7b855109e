//! Route authorization (`require`): scopes all-of, and claim matchers.

use serde_json::{Map, Value};

use crate::config::{AuthPolicy, ClaimMatcher};
use crate::error::Reject;
use crate::verify::Verified;

/// Walk a dotted claim path.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for seg in rest {
        v = v.as_object()?.get(seg)?;
    }
    Some(v)
}

/// Scopes from `scope` (space-separated string) and `scp` (array, or string as some
/// providers send it).
pub fn scopes(claims: &Map<String, Value>) -> Box<[Box<str>]> {
    let mut out: Vec<Box<str>> = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => {
                out.extend(s.split(' ').filter(|s| !s.is_empty()).map(Into::into))
            }
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str).map(Into::into)),
            _ => {}
        }
    }
    out.into_boxed_slice()
}

/// The route's `require`: every scope, every claim matcher. A missing claim never matches.
pub fn authorize(policy: &AuthPolicy, token: &Verified) -> Result<(), Reject> {
    if !policy
        .scopes
        .iter()
        .all(|s| token.scopes.iter().any(|t| **t == **s))
    {
        return Err(Reject::InsufficientScope);
    }
    for req in &policy.claims {
        let ok = lookup(&token.claims, &req.claim).is_some_and(|v| matches(&req.matcher, v));
        if !ok {
            return Err(Reject::ClaimMismatch);
        }
    }
    Ok(())
}

fn matches(m: &ClaimMatcher, v: &Value) -> bool {
    match m {
        ClaimMatcher::Equals(want) => v == want,
        ClaimMatcher::OneOf(list) => match v {
            Value::Array(items) => items.iter().any(|i| list.contains(i)),
            other => list.contains(other),
        },
        ClaimMatcher::Contains(want) => v.as_array().is_some_and(|a| a.contains(want)),
    }
}
