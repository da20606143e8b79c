//! Bounds on what a request can make the server repeat: request-derived strings cut before they
//! reach a log line or a span, and per-call warnings rate-limited.
//!
//! Every string the gateway sends (hook name, API ID, event type, handler name, …) can be as
//! long as the message, and every call can be malformed. Without these bounds one 4 MiB hook
//! name is a 4 MiB log line, and a burst of bad calls is a burst of WARN lines.

use std::{
    borrow::Cow,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Longest request-derived string (in bytes) printed whole in a log line.
pub const LOG_STRING_BYTES: usize = 256;

/// Longest request-derived span attribute value (in bytes); longer ones are truncated, as
/// OpenTelemetry's attribute value length limit truncates, without a marker.
pub const SPAN_ATTRIBUTE_BYTES: usize = 256;

/// A rate-limited warning writes at most [`WARN_BURST`] lines at once, then one per
/// `WARN_INTERVAL`.
pub const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Lines a rate-limited warning may write back to back (the first few distinct problems of a
/// burst all show), before it is held to one per [`WARN_INTERVAL`].
pub const WARN_BURST: u64 = 5;

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
pub fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    // A UTF-8 char is at most 4 bytes, so this steps back at most 3 times.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` as it is when it has at most `max` bytes (borrowed: no allocation), else its first
/// bytes up to a char boundary followed by `…[cut, <full length> bytes]`.
///
/// The one form every cut string takes in logs, so a reader (or a grep) knows a value was cut
/// and how long it really was.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    Cow::Owned(format!("{}…[cut, {} bytes]", prefix(text, max), text.len()))
}

/// A request-derived string for a log line: [`cut`] to [`LOG_STRING_BYTES`].
///
/// Use as `hook_name = &*bounds::log(name)`: the field stays a string (quoted in text logs, a
/// JSON string in JSON logs), and the macro evaluates it only when the line is enabled.
pub fn log(text: &str) -> Cow<'_, str> {
    cut(text, LOG_STRING_BYTES)
}

/// A rate limit for one kind of warning: at most [`WARN_BURST`] lines at once, then one per
/// [`WARN_INTERVAL`]; the lines in between are counted, and the next line written says how many
/// were suppressed.
///
/// Two atomics, no lock: [`WarnLimit::permit`] is called on every malformed or refused call.
/// The limit is a GCRA (generic cell rate algorithm): one "theoretical arrival time" that each
/// line written pushes one interval further, refused when it would run more than a burst ahead.
#[derive(Debug)]
pub struct WarnLimit {
    origin: Instant,
    interval_ms: u64,
    burst: u64,
    /// Milliseconds since `origin`: the arrival time the next line is measured against.
    tat_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for WarnLimit {
    fn default() -> Self {
        Self::new(WARN_INTERVAL, WARN_BURST)
    }
}

impl WarnLimit {
    /// At most `burst` lines at once (at least one), then one per `interval`.
    pub fn new(interval: Duration, burst: u64) -> Self {
        Self {
            origin: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            burst: burst.max(1),
            tat_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one written)` when a line may be written now;
    /// `None` (and the line is counted as suppressed) otherwise.
    pub fn permit(&self) -> Option<u64> {
        let now_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.permit_at(now_ms)
    }

    fn permit_at(&self, now_ms: u64) -> Option<u64> {
        let ahead = self.interval_ms.saturating_mul(self.burst);
        let taken = self
            .tat_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                let next = tat.max(now_ms).saturating_add(self.interval_ms);
                (next - now_ms <= ahead).then_some(next)
            });
        if taken.is_ok() {
            // A count added concurrently after this swap goes to the next line: none is lost.
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn short_strings_are_borrowed_and_long_ones_cut_with_their_length() {
        let short = "MyPreHook";
        assert!(matches!(log(short), Cow::Borrowed(s) if std::ptr::eq(s, short)));
        let exactly = "a".repeat(LOG_STRING_BYTES);
        assert!(matches!(log(&exactly), Cow::Borrowed(_)));

        let long = "n".repeat(4 << 20);
        let logged = log(&long);
        assert_eq!(
            logged,
            format!("{}…[cut, 4194304 bytes]", "n".repeat(LOG_STRING_BYTES))
        );
        assert!(logged.len() < LOG_STRING_BYTES + 32);
    }

    #[test]
    fn cuts_fall_on_char_boundaries() {
        // '€' is three bytes: byte 4 falls inside the second one.
        assert_eq!(cut("€€€", 4), "€…[cut, 9 bytes]");
        assert_eq!(prefix("€€€", 4), "€");
        assert_eq!(prefix("€€€", 2), "");
        assert_eq!(prefix("€€€", 6), "€€");
        assert_eq!(prefix("abc", 10), "abc");
        assert_eq!(cut("", 0), "");
    }

    #[test]
    fn the_limit_writes_one_line_per_interval_and_counts_the_rest() {
        let limit = WarnLimit::new(Duration::from_millis(1000), 1);
        assert_eq!(limit.permit_at(0), Some(0), "the first line is written");
        for t in [1, 10, 500, 999] {
            assert_eq!(limit.permit_at(t), None);
        }
        assert_eq!(limit.permit_at(1000), Some(4), "four suppressed meanwhile");
        assert_eq!(limit.permit_at(1500), None);
        assert_eq!(limit.permit_at(5000), Some(1));
        assert_eq!(limit.permit_at(5001), None);
    }

    #[test]
    fn a_burst_is_written_then_one_line_per_interval() {
        let limit = WarnLimit::new(Duration::from_millis(1000), 3);
        let written: Vec<_> = (0..10).map(|_| limit.permit_at(100)).collect();
        assert_eq!(
            written,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        assert_eq!(limit.permit_at(1099), None);
        assert_eq!(limit.permit_at(1100), Some(8));
        assert_eq!(limit.permit_at(1100), None);
        // Quiet for a while: the whole burst is available again.
        let later: Vec<_> = (0..4).map(|_| limit.permit_at(60_000)).collect();
        assert_eq!(later, [Some(1), Some(0), Some(0), None]);
    }

    #[test]
    fn the_default_limit_writes_a_handful_of_a_thousand() {
        let limit = WarnLimit::default();
        let written = (0..1000).filter(|_| limit.permit().is_some()).count();
        // The burst, and one more if the loop crossed an interval.
        assert!(
            (WARN_BURST as usize..=WARN_BURST as usize + 1).contains(&written),
            "{written}"
        );
    }

    #[test]
    fn concurrent_callers_write_one_line_and_lose_no_count() {
        let limit = Arc::new(WarnLimit::new(Duration::from_secs(3600), 1));
        let written: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let limit = limit.clone();
                    scope.spawn(move || {
                        (0..1000).filter(|_| limit.permit_at(7).is_some()).count() as u64
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(written, 1, "one line within the interval");
        assert_eq!(limit.permit_at(u64::MAX / 2), Some(3999));
    }
}
