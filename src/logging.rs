//! Log set-up: text or JSON through `tracing`. Tokens, signatures and secrets are never
//! logged anywhere in the crate; the access line carries route names, not queries.
//!
//! Lines reach stderr through one buffer: INFO and below (the access line of every request)
//! are held for at most [`FLUSH_EVERY`] or [`HOLD_BYTES`], so a busy gateway writes a batch
//! of lines per system call instead of one per request; a WARN or ERROR line is written at
//! once, with everything held before it, in order. The process flushes before it exits and
//! before a panic is reported. A `kill -9` loses at most the last [`FLUSH_EVERY`] of lines.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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
/// Taken before [`HELD`] by whoever writes to stderr, so batches leave in the order they
/// were taken. It holds the buffer a batch is swapped into: appending a line never waits
/// for a write.
static WRITING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Set when no flusher thread could start: then every line is written at once.
static UNBUFFERED: AtomicBool = AtomicBool::new(false);
/// The shape of this module's subscriber, so [`EventLine`] can write lines of that shape
/// straight into the buffer: [`NOT_OURS`] (no subscriber of ours, or coloured text for a
/// terminal: use `tracing`), [`JSON`] or [`PLAIN_TEXT`].
static SHAPE: AtomicU8 = AtomicU8::new(NOT_OURS);
const NOT_OURS: u8 = 0;
const JSON: u8 = 1;
const PLAIN_TEXT: u8 = 2;

/// Install the global subscriber; `RUST_LOG` overrides the configured level.
pub fn init(cfg: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(cfg.level.as_str()));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never into a file or a collector.
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(Stderr);
    let installed = if cfg.format == LogFormat::Json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if installed.is_ok() {
        let shape = match cfg.format {
            LogFormat::Json => JSON,
            LogFormat::Text if !ansi => PLAIN_TEXT,
            LogFormat::Text => NOT_OURS,
        };
        SHAPE.store(shape, Ordering::Relaxed);
        start_flusher();
    }
}

/// Write whatever lines are held to stderr.
pub fn flush() {
    write_held(&mut lock(&WRITING));
}

/// Flushes the held lines when dropped: the first binding of `main`, so that they are
/// written after everything else ends, a panic that unwinds out of `main` included.
pub struct FlushOnExit;

impl Drop for FlushOnExit {
    fn drop(&mut self) {
        flush();
    }
}

fn lock(m: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hold `line`; write the batch now if the line is urgent or the batch is full.
fn hold(line: &[u8], urgent: bool) {
    if urgent || UNBUFFERED.load(Ordering::Relaxed) {
        let mut out = lock(&WRITING);
        lock(&HELD).extend_from_slice(line);
        write_held(&mut out);
        return;
    }
    let full = {
        let mut held = lock(&HELD);
        held.extend_from_slice(line);
        held.len() >= HOLD_BYTES
    };
    // A write under way takes this batch's lines with it, or the next flush does.
    if full {
        if let Ok(mut out) = WRITING.try_lock() {
            write_held(&mut out);
        }
    }
}

/// Swap the held lines into `out` (the [`WRITING`] buffer, empty) and write them.
fn write_held(out: &mut Vec<u8>) {
    std::mem::swap(&mut *lock(&HELD), out);
    if !out.is_empty() {
        // Nowhere left to report a failed write of the log itself.
        let _ = std::io::stderr().lock().write_all(out);
        out.clear();
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
        // Bounded: the panicking thread may itself be the one writing.
        for _ in 0..50 {
            match WRITING.try_lock() {
                Ok(mut out) => {
                    write_held(&mut out);
                    break;
                }
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    write_held(&mut p.into_inner());
                    break;
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
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
        hold(line, self.urgent);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An INFO line in the installed subscriber's shape, built without `tracing`'s formatter:
/// for the access line, written once per request, where that formatter costs 18,700
/// (text) to 26,300 (JSON) instructions: 45–63 % of what the rest of a cache hit costs
/// (42,000). The caller checks that the event is enabled, as for any event. Lines are byte
/// for byte what the subscriber writes:
///
/// - JSON: `{"timestamp":"…","level":"INFO","k":"v",…,"target":"…"}`
/// - text: `… ␣INFO target: k="v" ip=10.0.0.1 n=3` (strings quoted and escaped as `{:?}`)
pub struct EventLine {
    out: Vec<u8>,
    json: bool,
    target: &'static str,
    fields: usize,
}

impl EventLine {
    /// A line of `target` to fill, or `None` when the subscriber is not this module's (or
    /// colours text for a terminal): then emit the event through `tracing`.
    pub fn info(target: &'static str) -> Option<EventLine> {
        let json = match SHAPE.load(Ordering::Relaxed) {
            JSON => true,
            PLAIN_TEXT => false,
            _ => return None,
        };
        Some(EventLine::at(std::time::SystemTime::now(), json, target))
    }

    fn at(time: std::time::SystemTime, json: bool, target: &'static str) -> EventLine {
        let mut out = Vec::with_capacity(384);
        if json {
            out.extend_from_slice(b"{\"timestamp\":\"");
            rfc3339_micros(&mut out, time);
            out.extend_from_slice(b"\",\"level\":\"INFO\"");
        } else {
            rfc3339_micros(&mut out, time);
            out.extend_from_slice(b"  INFO ");
            out.extend_from_slice(target.as_bytes());
            out.extend_from_slice(b": ");
        }
        EventLine {
            out,
            json,
            target,
            fields: 0,
        }
    }

    /// Keys are the caller's identifiers: safe in either shape as they are.
    fn key(&mut self, key: &str) {
        if self.json {
            self.out.extend_from_slice(b",\"");
            self.out.extend_from_slice(key.as_bytes());
            self.out.extend_from_slice(b"\":");
        } else {
            if self.fields > 0 {
                self.out.push(b' ');
            }
            self.out.extend_from_slice(key.as_bytes());
            self.out.push(b'=');
        }
        self.fields += 1;
    }

    /// A string field, escaped (it may hold a client's bytes).
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        // Writing into a Vec cannot fail.
        if self.json {
            let _ = serde_json::to_writer(&mut self.out, value);
        } else {
            let _ = write!(self.out, "{value:?}");
        }
        self
    }

    /// A string field written only when present (as `tracing` skips a `None`).
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.str(key, v);
        }
        self
    }

    /// An IP address as `Display` shows it (`%ip` in `tracing`): a string in JSON, bare in
    /// text.
    pub fn ip(&mut self, key: &str, ip: std::net::IpAddr) -> &mut Self {
        self.key(key);
        let quote = if self.json { &b"\""[..] } else { &b""[..] };
        self.out.extend_from_slice(quote);
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push(b'.');
                    }
                    let _ = serde_json::to_writer(&mut self.out, &octet);
                }
            }
            v6 => {
                let _ = write!(self.out, "{v6}");
            }
        }
        self.out.extend_from_slice(quote);
        self
    }

    /// A number field.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.out, &value);
        self
    }

    /// A number field written only when present.
    pub fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        if let Some(v) = value {
            self.u64(key, v);
        }
        self
    }

    /// The whole line: JSON ends with its `target`.
    fn end(mut self) -> Vec<u8> {
        if self.json {
            self.str("target", self.target);
            self.out.push(b'}');
        }
        self.out.push(b'\n');
        self.out
    }

    /// End the line and hand it to the buffer.
    pub fn finish(self) {
        hold(&self.end(), false);
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

    /// Client bytes cannot break out of their field: the JSON line stays one object with
    /// the values given; the text line, one line with each value quoted as `{:?}` quotes it.
    #[test]
    fn hostile_values_stay_inside_their_fields() {
        let path = "/a\"b\\c\n{\"route\":\"admin\"} x=\"y\"\u{7f}\u{2028}é'";
        let fill = |json: bool| {
            let mut line = EventLine::at(UNIX_EPOCH, json, "jwtgate::access");
            line.str("request_id", "x")
                .ip("client", "10.0.0.255".parse().expect("ip"))
                .opt_str("path", Some(path))
                .opt_str("upstream", None)
                .u64("status", 401)
                .opt_u64("bytes", None)
                .ip("peer6", "::ffff:1.2.3.4".parse().expect("ip"));
            String::from_utf8(line.end()).expect("utf-8")
        };
        let json = fill(true);
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("one object");
        assert_eq!(v["path"], path);
        assert_eq!(v["client"], "10.0.0.255");
        assert_eq!(v["peer6"], "::ffff:1.2.3.4");
        assert_eq!(v["status"], 401);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["target"], "jwtgate::access");
        let keys = v.as_object().expect("object");
        assert!(!keys.contains_key("upstream") && !keys.contains_key("bytes"));

        let text = fill(false);
        assert_eq!(
            text,
            format!(
                "1970-01-01T00:00:00.000000Z  INFO jwtgate::access: request_id=\"x\" \
                 client=10.0.0.255 path={path:?} status=401 peer6=::ffff:1.2.3.4\n"
            )
        );
    }

    /// Captures what a `tracing` subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line built here is the line `tracing`'s subscriber (as `init` sets it up, off a
    /// terminal) writes for the same event, byte for byte after the timestamp.
    #[test]
    fn lines_match_the_subscriber() {
        let path = "/p\"q\\r\t'é";
        let ip: std::net::IpAddr = "192.0.2.7".parse().expect("ip");
        let emit = || {
            tracing::info!(
                target: "jwtgate::access",
                request_id = "id-1",
                client = %ip,
                path = Some(path),
                upstream = None::<&str>,
                status = 200u16,
                bytes = Some(3u64),
                duration_us = 17u64,
            )
        };
        for json in [true, false] {
            let cap = Capture::default();
            let out = cap.clone();
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || out.clone());
            if json {
                let sub = builder.json().flatten_event(true).finish();
                tracing::subscriber::with_default(sub, emit);
            } else {
                tracing::subscriber::with_default(builder.finish(), emit);
            }
            let theirs = String::from_utf8(cap.0.lock().expect("capture").clone()).expect("utf-8");
            let mut line = EventLine::at(UNIX_EPOCH, json, "jwtgate::access");
            line.str("request_id", "id-1")
                .ip("client", ip)
                .opt_str("path", Some(path))
                .opt_str("upstream", None)
                .u64("status", 200)
                .opt_u64("bytes", Some(3))
                .u64("duration_us", 17);
            let ours = String::from_utf8(line.end()).expect("utf-8");
            let stamp = "1970-01-01T00:00:00.000000Z".len();
            let (t, o) = if json {
                let skip = "{\"timestamp\":\"".len() + stamp;
                (&theirs[skip..], &ours[skip..])
            } else {
                (&theirs[stamp..], &ours[stamp..])
            };
            assert_eq!(o, t, "json: {json}");
        }
    }
}
