//! Log timestamps as `tracing-subscriber` writes them (RFC 3339, UTC, microseconds:
//! `2026-12-02T15:15:21.069179Z`), with the date and time of day worked out once a second
//! rather than once a line: at tens of thousands of lines a second the calendar arithmetic and
//! the formatting machinery were a sixth of the cost of a `dispatch` line.

use std::{
    cell::Cell,
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing_subscriber::fmt::{format::Writer, time::FormatTime};

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`
const STAMP_LEN: usize = 27;
/// Up to and including the `.` before the microseconds.
const SECOND_LEN: usize = 20;

/// The clock of the log lines; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedSecondClock;

thread_local! {
    /// The last second formatted on this thread, and its text.
    static SECOND: Cell<Option<(u64, [u8; SECOND_LEN])>> = const { Cell::new(None) };
}

impl FormatTime for CachedSecondClock {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        w.write_str(stamp(
            now.as_secs(),
            now.subsec_micros(),
            &mut [0; STAMP_LEN],
        ))
    }
}

/// The timestamp of `secs` and `micros` past the epoch, written into `out`.
fn stamp(secs: u64, micros: u32, out: &mut [u8; STAMP_LEN]) -> &str {
    let second = match SECOND.get() {
        Some((cached, text)) if cached == secs => text,
        _ => {
            let text = format_second(secs);
            SECOND.set(Some((secs, text)));
            text
        }
    };
    out[..SECOND_LEN].copy_from_slice(&second);
    put_digits(&mut out[SECOND_LEN..STAMP_LEN - 1], u64::from(micros));
    out[STAMP_LEN - 1] = b'Z';
    std::str::from_utf8(out).unwrap_or("")
}

/// `YYYY-MM-DDTHH:MM:SS.` of a second past the epoch.
fn format_second(secs: u64) -> [u8; SECOND_LEN] {
    let (days, in_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days);
    let mut text = [0; SECOND_LEN];
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], month);
    put_digits(&mut text[8..10], day);
    put_digits(&mut text[11..13], in_day / 3600);
    put_digits(&mut text[14..16], in_day / 60 % 60);
    put_digits(&mut text[17..19], in_day % 60);
    for (at, separator) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        text[at] = separator;
    }
    text
}

/// `value`'s last decimal digits, zero-padded, filling `out`.
fn put_digits(out: &mut [u8], value: u64) {
    let mut rest = value;
    for digit in out.iter_mut().rev() {
        *digit = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
    }
}

/// Year, month and day of a day counted from 1970-01-01 (the proleptic Gregorian calendar,
/// by eras of 400 years, each 146 097 days, starting on 1 March so leap days come last).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days from 0000-03-01
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, micros: u32) -> String {
        stamp(secs, micros, &mut [0; STAMP_LEN]).to_string()
    }

    #[test]
    fn seconds_are_calendar_dates_in_utc() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(951_868_799, 999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(at(1_798_761_599, 120_000), "2026-12-31T23:59:59.120000Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000000Z");
        // Again within the same second: from the cache, new microseconds.
        assert_eq!(at(4_102_444_800, 42), "2100-01-01T00:00:00.000042Z");
    }

    #[test]
    fn stamps_match_tracing_subscribers_own_clock() {
        use tracing_subscriber::fmt::time::SystemTime as Theirs;
        for _ in 0..3 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            CachedSecondClock
                .format_time(&mut Writer::new(&mut ours))
                .unwrap();
            Theirs.format_time(&mut Writer::new(&mut theirs)).unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
            // The same second unless one straddled a second's end.
            if ours[..19] == theirs[..19] {
                return;
            }
        }
        panic!("three straddled seconds in a row");
    }
}
