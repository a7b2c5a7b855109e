//! Log set-up: text or JSON through `tracing`. Tokens, signatures and secrets are never
//! logged anywhere in the crate; the access line carries route names, not queries.
//!
//! Lines reach stderr through one buffer: INFO and below (the access line of every request)
//! are held for at most [`FLUSH_EVERY`] or [`HOLD_BYTES`], so a busy gateway writes a batch
//! of lines per system call instead of one per request; a WARN or ERROR line is written at
//! once, with everything held before it, in order. The process flushes before it exits and
//! before a panic is reported. A `kill -9` loses at most the last [`FLUSH_EVERY`] of lines.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written at once.
pub const HOLD_BYTES: usize = 32 * 1024;

static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Set when no flusher thread could start: then every line is written at once.
static UNBUFFERED: AtomicBool = AtomicBool::new(false);
/// Set when this module installed the JSON subscriber: [`JsonLine`] may then write lines of
/// the same shape straight into the buffer.
static JSON: AtomicBool = AtomicBool::new(false);

/// Install the global subscriber; `RUST_LOG` overrides the configured level.
pub fn init(cfg: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(cfg.level.as_str()));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never into a file or a collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(Stderr);
    let installed = if cfg.format == LogFormat::Json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if installed.is_ok() {
        JSON.store(cfg.format == LogFormat::Json, Ordering::Relaxed);
        start_flusher();
    }
}

/// Write whatever lines are held to stderr.
pub fn flush() {
    write_out(&mut HELD.lock().unwrap_or_else(PoisonError::into_inner));
}

fn write_out(held: &mut Vec<u8>) {
    if !held.is_empty() {
        // Nowhere left to report a failed write of the log itself.
        let _ = std::io::stderr().lock().write_all(held);
        held.clear();
    }
}

/// A thread that writes held lines every [`FLUSH_EVERY`], and a panic hook that writes them
/// before the panic's own message.
fn start_flusher() {
    let spawned = std::thread::Builder::new()
        .name("jwtgate-log".into())
        .spawn(|| loop {
            std::thread::sleep(FLUSH_EVERY);
            flush();
        });
    if spawned.is_err() {
        // Without the thread nothing would bound a line's wait: hold nothing.
        UNBUFFERED.store(true, Ordering::Relaxed);
    }
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut held) = HELD.try_lock() {
            write_out(&mut held);
        }
        report(info);
    }));
}

/// The subscriber's writer: one per event, told whether the event is urgent.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            urgent: *meta.level() <= Level::WARN || UNBUFFERED.load(Ordering::Relaxed),
        }
    }
}

/// One formatted event (the formatter writes each whole, at once).
struct Line {
    urgent: bool,
}

impl Write for Line {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        held.extend_from_slice(line);
        if self.urgent || held.len() >= HOLD_BYTES {
            write_out(&mut held);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An INFO line in the JSON subscriber's shape (`timestamp`, `level`, the fields in order,
/// `target`), built without `tracing`'s formatter: for the access line, written once per
/// request, where that formatter costs ~25,000 instructions (more than half of a cache hit's
/// own work) and this ~2,000. The caller checks that the event is enabled, as for any event.
pub struct JsonLine(Vec<u8>);

impl JsonLine {
    /// A line to fill, or `None` when the JSON subscriber is not this module's (text logs,
    /// or another subscriber): then emit the event through `tracing`.
    pub fn info() -> Option<JsonLine> {
        if !JSON.load(Ordering::Relaxed) {
            return None;
        }
        Some(JsonLine::at(std::time::SystemTime::now()))
    }

    fn at(time: std::time::SystemTime) -> JsonLine {
        let mut out = Vec::with_capacity(384);
        out.extend_from_slice(b"{\"timestamp\":\"");
        rfc3339_micros(&mut out, time);
        out.extend_from_slice(b"\",\"level\":\"INFO\"");
        JsonLine(out)
    }

    fn key(&mut self, key: &str) {
        self.0.push(b',');
        // Keys are the caller's identifiers: JSON-safe as they are.
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    /// A string field, escaped as JSON (it may hold a client's bytes).
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, value);
        self
    }

    /// A string field written only when present (as `tracing` skips a `None`).
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.str(key, v);
        }
        self
    }

    /// An IP address, as a JSON string (`%ip` in `tracing`).
    pub fn ip(&mut self, key: &str, ip: std::net::IpAddr) -> &mut Self {
        match ip {
            std::net::IpAddr::V4(v4) => {
                self.key(key);
                self.0.push(b'"');
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0.push(b'.');
                    }
                    let _ = serde_json::to_writer(&mut self.0, &octet);
                }
                self.0.push(b'"');
                self
            }
            v6 => self.str(key, &v6.to_string()),
        }
    }

    /// A number field.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, &value);
        self
    }

    /// A number field written only when present.
    pub fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        if let Some(v) = value {
            self.u64(key, v);
        }
        self
    }

    /// End the line with its `target` and hand it to the buffer.
    pub fn finish(mut self, target: &str) {
        self.str("target", target);
        self.0.extend_from_slice(b"}\n");
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        held.extend_from_slice(&self.0);
        if held.len() >= HOLD_BYTES || UNBUFFERED.load(Ordering::Relaxed) {
            write_out(&mut held);
        }
    }
}

/// `time` as `tracing-subscriber` shows it: RFC 3339, UTC, microseconds
/// (`2026-12-01T22:37:16.514843Z`).
fn rfc3339_micros(out: &mut Vec<u8>, time: std::time::SystemTime) {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (rem / 3_600, rem % 3_600 / 60, rem % 60);
    digits(out, year.clamp(0, 9_999) as u64, 4);
    out.push(b'-');
    digits(out, month as u64, 2);
    out.push(b'-');
    digits(out, day as u64, 2);
    out.push(b'T');
    digits(out, hour, 2);
    out.push(b':');
    digits(out, minute, 2);
    out.push(b':');
    digits(out, second, 2);
    out.push(b'.');
    digits(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

/// `value` in decimal, zero-padded to `width` digits (it has at most `width`).
fn digits(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn shown(secs: u64, micros: u32) -> String {
        let mut out = Vec::new();
        rfc3339_micros(
            &mut out,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into()),
        );
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn timestamps_as_tracing_shows_them() {
        assert_eq!(shown(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(shown(1_796_164_636, 514_843), "2026-12-01T22:37:16.514843Z");
        assert_eq!(shown(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(shown(951_868_800, 7), "2000-03-01T00:00:00.000007Z");
    }

    /// Client bytes cannot break out of their field: the line stays one JSON object with
    /// the values given, in order.
    #[test]
    fn hostile_values_stay_inside_their_fields() {
        let path = "/a\"b\\c\n{\"route\":\"admin\"}\u{7f}\u{2028}é";
        let mut line = JsonLine::at(UNIX_EPOCH);
        line.str("request_id", "x")
            .ip("client", "10.0.0.255".parse().expect("ip"))
            .opt_str("path", Some(path))
            .opt_str("upstream", None)
            .u64("status", 401)
            .opt_u64("bytes", None)
            .ip("peer6", "::ffff:1.2.3.4".parse().expect("ip"));
        line.str("target", "jwtgate::access");
        let text = String::from_utf8(line.0).expect("utf-8");
        assert_eq!(text.matches('\n').count(), 0, "{text}");
        let v: serde_json::Value = serde_json::from_str(&(text + "}")).expect("one object");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(v["path"], path);
        assert_eq!(v["client"], "10.0.0.255");
        assert_eq!(v["peer6"], "::ffff:1.2.3.4");
        assert_eq!(v["status"], 401);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert!(
            !keys.contains(&"upstream") && !keys.contains(&"bytes"),
            "{keys:?}"
        );
    }
}
