//! ISO 8601 timestamps as Celery writes them in `eta` and `expires`.
//!
//! Celery reads these with Python's `datetime.fromisoformat`. This parser accepts the
//! forms that function accepts and a client plausibly sends: `YYYY-MM-DD` or `YYYYMMDD`,
//! optionally followed by `T`, `t` or a space and `HH[:MM[:SS[.f…]]]` (1–9 fraction
//! digits, `,` allowed for `.`), optionally followed by `Z`/`z` or an offset
//! `±HH[:MM[:SS[.ffffff]]]` / `±HHMM`. A value without offset is taken as UTC (spec §2.2).

use std::fmt;

/// A validated ISO 8601 timestamp: the text as received plus the instant it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// The text exactly as received, so it can be copied into messages and results.
    text: String,
    /// Microseconds since the Unix epoch, UTC.
    unix_micros: i64,
    /// Whether the text carried an offset (Celery calls that "aware").
    has_offset: bool,
}

impl Timestamp {
    /// Parses `text`; `None` when it is not a timestamp of the accepted forms.
    pub fn parse(text: &str) -> Option<Timestamp> {
        let (unix_micros, has_offset) = parse_instant(text.as_bytes())?;
        Some(Timestamp {
            text: text.to_owned(),
            unix_micros,
            has_offset,
        })
    }

    /// The timestamp for `unix_micros`, written as Python's `isoformat()` writes an aware
    /// UTC datetime (`2024-01-02T03:04:05.123456+00:00`, no fraction when it is zero).
    pub fn from_unix_micros(unix_micros: i64) -> Timestamp {
        let seconds = unix_micros.div_euclid(1_000_000);
        let micros = unix_micros.rem_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60,
        );
        // Written digit by digit: a worker writes one for every result it stores.
        let mut text = String::with_capacity("2024-01-02T03:04:05.123456+00:00".len());
        match u32::try_from(year) {
            Ok(year) if year <= 9999 => push_padded(&mut text, year, 4),
            _ => text.push_str(&format!("{year:04}")),
        }
        // Each is in 0..60 by construction.
        let parts = [
            ('-', month),
            ('-', day),
            ('T', hour),
            (':', minute),
            (':', second),
        ];
        for (separator, value) in parts {
            text.push(separator);
            push_padded(&mut text, value as u32, 2);
        }
        if micros != 0 {
            text.push('.');
            push_padded(&mut text, micros as u32, 6);
        }
        text.push_str("+00:00");
        Timestamp {
            text,
            unix_micros,
            has_offset: true,
        }
    }

    /// The text as received.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Microseconds since the Unix epoch, UTC.
    pub fn unix_micros(&self) -> i64 {
        self.unix_micros
    }

    /// Whether the text carried an offset; without one the time was taken as UTC.
    pub fn has_offset(&self) -> bool {
        self.has_offset
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A cursor over the bytes of a timestamp.
struct Cursor<'a> {
    /// The whole input.
    bytes: &'a [u8],
    /// The next byte to read.
    pos: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, count: usize) -> Option<i64> {
        let slice = self.bytes.get(self.pos..self.pos + count)?;
        let mut value = 0i64;
        for &b in slice {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(b - b'0');
        }
        self.pos += count;
        Some(value)
    }

    fn eat(&mut self, accepted: &[u8]) -> bool {
        match self.bytes.get(self.pos) {
            Some(b) if accepted.contains(b) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }

    /// `.f…` or `,f…` with 1..=max_digits digits, as microseconds (truncated).
    fn fraction(&mut self, max_digits: usize) -> Option<i64> {
        if !self.eat(b".,") {
            return Some(0);
        }
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = &self.bytes[start..self.pos];
        if digits.is_empty() || digits.len() > max_digits {
            return None;
        }
        let mut micros = 0i64;
        for i in 0..6 {
            micros = micros * 10 + digits.get(i).map_or(0, |d| i64::from(d - b'0'));
        }
        Some(micros)
    }
}

fn parse_instant(bytes: &[u8]) -> Option<(i64, bool)> {
    let mut c = Cursor { bytes, pos: 0 };
    let year = c.digits(4)?;
    let extended = c.eat(b"-");
    let month = c.digits(2)?;
    if extended && !c.eat(b"-") {
        return None;
    }
    let day = c.digits(2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut micros_of_day = 0i64;
    let mut offset_micros = 0i64;
    let mut has_offset = false;
    if !c.done() {
        if !c.eat(b"Tt ") {
            return None;
        }
        let hour = c.digits(2)?;
        let (mut minute, mut second, mut fraction) = (0, 0, 0);
        if c.eat(b":") {
            minute = c.digits(2)?;
            if c.eat(b":") {
                second = c.digits(2)?;
                fraction = c.fraction(9)?;
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        micros_of_day = ((hour * 60 + minute) * 60 + second) * 1_000_000 + fraction;
        if c.eat(b"Zz") {
            has_offset = true;
        } else if let Some(sign @ (b'+' | b'-')) = c.peek() {
            c.pos += 1;
            has_offset = true;
            let hours = c.digits(2)?;
            let (mut minutes, mut seconds, mut fraction) = (0, 0, 0);
            let colon = c.eat(b":");
            if !c.done() {
                minutes = c.digits(2)?;
                if colon && c.eat(b":") {
                    seconds = c.digits(2)?;
                    fraction = c.fraction(6)?;
                }
            }
            if hours > 23 || minutes > 59 || seconds > 59 {
                return None;
            }
            let magnitude = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + fraction;
            offset_micros = if sign == b'-' { -magnitude } else { magnitude };
        }
        if !c.done() {
            return None;
        }
    }
    let days = days_from_civil(year, month, day);
    let unix = days * 86_400 * 1_000_000 + micros_of_day - offset_micros;
    Some((unix, has_offset))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub(super) fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
/// Appends `value` as `width` decimal digits, zero-padded; `value` must have no more.
fn push_padded(text: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = value / 10u32.pow(place) % 10;
        text.push(char::from(b'0' + digit as u8));
    }
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celery_eta_with_offset_parses_to_utc() {
        let ts = Timestamp::parse("2026-11-21T05:32:24.091466+00:00").expect("valid");
        assert_eq!(ts.unix_micros(), 1_795_239_144_091_466);
        assert!(ts.has_offset());
        let shifted = Timestamp::parse("2026-11-21T07:32:24.091466+02:00").expect("valid");
        assert_eq!(shifted.unix_micros(), ts.unix_micros());
    }

    #[test]
    fn accepted_forms() {
        for text in [
            "2024-01-02",
            "20240102",
            "2024-01-02T03",
            "2024-01-02T03:04",
            "2024-01-02 03:04:05",
            "2024-01-02t03:04:05.5Z",
            "2024-01-02T03:04:05,123456789-05:30",
            "2024-01-02T03:04:05+0100",
            "2024-01-02T03:04:05+01:00:30.5",
            "2024-02-29T00:00:00",
        ] {
            assert!(Timestamp::parse(text).is_some(), "{text}");
        }
    }

    #[test]
    fn rejected_forms() {
        for text in [
            "",
            "tomorrow",
            "2024-13-01",
            "2023-02-29",
            "2024-01-02T24:00:00",
            "2024-01-02T03:04:60",
            "2024-01-02T03:04:05+",
            "2024-01-02T03:04:05 ",
            "2024-01-02T03:04:05.",
            "2024-01-02X03:04",
            "1700000000",
            "2024-01-0é",
        ] {
            assert!(Timestamp::parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn naive_time_is_utc() {
        let naive = Timestamp::parse("1970-01-01T00:00:01").expect("valid");
        assert_eq!(naive.unix_micros(), 1_000_000);
        assert!(!naive.has_offset());
    }

    #[test]
    fn formatting_round_trips() {
        for micros in [0, 1_795_239_144_091_466, 1_795_239_144_000_000, -1] {
            let ts = Timestamp::from_unix_micros(micros);
            let parsed = Timestamp::parse(ts.as_str()).expect("own output parses");
            assert_eq!(parsed.unix_micros(), micros, "{}", ts.as_str());
        }
        assert_eq!(
            Timestamp::from_unix_micros(1_795_239_144_000_000).as_str(),
            "2026-11-21T05:32:24+00:00"
        );
        for (micros, python_isoformat) in [
            (1_795_239_144_000_007, "2026-11-21T05:32:24.000007+00:00"),
            (-1, "1969-12-31T23:59:59.999999+00:00"),
            (-62_135_596_800_000_000, "0001-01-01T00:00:00+00:00"),
            (253_402_300_799_000_000, "9999-12-31T23:59:59+00:00"),
        ] {
            assert_eq!(
                Timestamp::from_unix_micros(micros).as_str(),
                python_isoformat
            );
        }
    }
}
