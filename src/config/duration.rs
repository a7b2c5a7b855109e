//! Durations in configuration files: `500ms`, `30s`, `5m`, `24h`, or several (`1m30s`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A duration as written in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s, 5m, 24h, 7d or 1h30m")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Parse `500ms`, `30s`, `5m`, `24h`, `7d` and sums of them (`1h30m`, `1d 12h`), with the
/// units of the `humantime` crate (fractions such as `1.5s` too); a bare number or a sign
/// is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    // humantime reads a bare `0` as zero; a unit is always required here.
    if text.is_empty() || text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(s));
    }
    humantime::parse_duration(text).map_err(|_| bad(s))
}

fn bad(s: &str) -> String {
    format!("invalid duration `{s}`: write it as 500ms, 30s, 5m, 24h, 7d or 1h30m")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units and sums parse; anything else is refused with the accepted forms.
    #[test]
    fn duration_table() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("24h", Duration::from_secs(86_400)),
            ("1m30s", Duration::from_secs(90)),
            ("1d", Duration::from_secs(86_400)),
            ("1h30m", Duration::from_secs(5_400)),
            ("1d 12h", Duration::from_secs(129_600)),
            ("1.5s", Duration::from_millis(1_500)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "0", "5", "s", "5 x", "-1s", "5 parsecs"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("500ms, 30s, 5m, 24h, 7d or 1h30m"), "{bad}: {e}");
        }
    }
}
