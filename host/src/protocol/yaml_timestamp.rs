//! YAML timestamps as PyYAML's `SafeLoader` reads them, written as kombu's `datetime` and
//! `date` markers.
//!
//! `yaml.safe_dump` writes a `datetime` as a plain scalar (`2024-01-02 03:04:05+00:00`)
//! and a `date` as `2024-01-02`; `yaml.safe_load` turns plain scalars of those shapes back
//! into objects, while a string that looks like one is written quoted. The grammar here is
//! PyYAML's: its implicit resolver decides which plain scalars are timestamps, its
//! constructor (more lenient: one-digit months and days also without a time) reads a
//! scalar tagged `!!timestamp`. The marker's value is Python's `isoformat()` of the object
//! PyYAML builds, which is what kombu's JSON encoder writes for it.

use serde_json::Value;

use super::kombu_json::type_marker;
use super::timestamp::days_in_month;

/// Whether PyYAML's implicit resolver takes this plain scalar for a timestamp. Only the
/// shape counts: one naming no real date or time (Feb 30) still resolves, and then makes
/// `yaml.safe_load` raise, as [`tagged_timestamp_marker`] does.
pub fn resolves_as_timestamp(scalar: &str) -> bool {
    YamlTimestamp::parse(scalar).is_some_and(|parsed| {
        parsed.time.is_some() || (parsed.month_digits == 2 && parsed.day_digits == 2)
    })
}

/// The kombu marker for a timestamp scalar (tagged `!!timestamp`, or plain and
/// [`resolves_as_timestamp`]); `Err` when it names no real date or time.
pub fn tagged_timestamp_marker(scalar: &str) -> Result<Value, String> {
    YamlTimestamp::parse(scalar)
        .ok_or_else(|| format!("{scalar:?} is not a YAML timestamp"))?
        .marker()
}

/// A timestamp's fields as PyYAML's `timestamp_regexp` splits them, not yet validated.
#[derive(Debug, PartialEq)]
struct YamlTimestamp {
    year: u32,
    month: u32,
    day: u32,
    month_digits: usize,
    day_digits: usize,
    time: Option<TimeOfDay>,
}

#[derive(Debug, PartialEq)]
struct TimeOfDay {
    hour: u32,
    minute: u32,
    second: u32,
    /// The fraction cut or padded to six digits, as PyYAML does.
    micros: u32,
    offset: Option<UtcOffset>,
}

#[derive(Debug, PartialEq)]
enum UtcOffset {
    /// `Z`.
    Utc,
    /// `±HH[:MM]`, in minutes east of UTC.
    Minutes(i32),
}

impl YamlTimestamp {
    /// `YYYY-M[M]-D[D]`, then optionally `T`/`t` or blanks, `H[H]:MM:SS[.f…]`, and
    /// optionally blanks and `Z` or `±H[H][:MM]`.
    fn parse(text: &str) -> Option<YamlTimestamp> {
        let mut cursor = Cursor(text.as_bytes());
        let (year, _) = cursor.digits(4, 4)?;
        cursor.expect(b'-')?;
        let (month, month_digits) = cursor.digits(1, 2)?;
        cursor.expect(b'-')?;
        let (day, day_digits) = cursor.digits(1, 2)?;
        let mut timestamp = YamlTimestamp {
            year,
            month,
            day,
            month_digits,
            day_digits,
            time: None,
        };
        if cursor.is_empty() {
            return Some(timestamp);
        }
        if !(cursor.eat(b'T') || cursor.eat(b't') || cursor.skip_blanks() > 0) {
            return None;
        }
        let (hour, _) = cursor.digits(1, 2)?;
        cursor.expect(b':')?;
        let (minute, _) = cursor.digits(2, 2)?;
        cursor.expect(b':')?;
        let (second, _) = cursor.digits(2, 2)?;
        let micros = if cursor.eat(b'.') {
            cursor.fraction_micros()
        } else {
            0
        };
        cursor.skip_blanks();
        let offset = if cursor.eat(b'Z') {
            Some(UtcOffset::Utc)
        } else if let Some(sign) = cursor.sign() {
            let (hours, _) = cursor.digits(1, 2)?;
            let minutes = if cursor.eat(b':') {
                cursor.digits(2, 2)?.0
            } else {
                0
            };
            let magnitude = i32::try_from(hours * 60 + minutes).ok()?;
            Some(UtcOffset::Minutes(sign * magnitude))
        } else {
            None
        };
        if !cursor.is_empty() {
            return None;
        }
        timestamp.time = Some(TimeOfDay {
            hour,
            minute,
            second,
            micros,
            offset,
        });
        Some(timestamp)
    }

    /// The kombu marker, once Python's `date`/`datetime`/`timezone` would accept the fields.
    fn marker(&self) -> Result<Value, String> {
        let invalid = || format!("{self} is not a valid date or time");
        let month_days = days_in_month(i64::from(self.year), i64::from(self.month));
        if self.year == 0
            || !(1..=12).contains(&self.month)
            || !(1..=month_days).contains(&i64::from(self.day))
        {
            return Err(invalid());
        }
        let date = format!("{:04}-{:02}-{:02}", self.year, self.month, self.day);
        let Some(time) = &self.time else {
            return Ok(type_marker("date", date));
        };
        if time.hour > 23 || time.minute > 59 || time.second > 59 {
            return Err(invalid());
        }
        let mut iso = format!(
            "{date}T{:02}:{:02}:{:02}",
            time.hour, time.minute, time.second
        );
        if time.micros != 0 {
            iso.push_str(&format!(".{:06}", time.micros));
        }
        match time.offset {
            None => {}
            Some(UtcOffset::Utc) => iso.push_str("+00:00"),
            Some(UtcOffset::Minutes(minutes)) if minutes.abs() < 24 * 60 => {
                let sign = if minutes < 0 { '-' } else { '+' };
                let minutes = minutes.abs();
                iso.push_str(&format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60));
            }
            Some(UtcOffset::Minutes(_)) => return Err(invalid()),
        }
        Ok(type_marker("datetime", iso))
    }
}

impl std::fmt::Display for YamlTimestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timestamp {}-{}-{}", self.year, self.month, self.day)?;
        if let Some(time) = &self.time {
            write!(f, " {}:{}:{}", time.hour, time.minute, time.second)?;
        }
        Ok(())
    }
}

/// The unread rest of a scalar.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn eat(&mut self, byte: u8) -> bool {
        match self.0.split_first() {
            Some((&first, rest)) if first == byte => {
                self.0 = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    fn skip_blanks(&mut self) -> usize {
        let blanks = self
            .0
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        self.0 = &self.0[blanks..];
        blanks
    }

    fn sign(&mut self) -> Option<i32> {
        if self.eat(b'+') {
            Some(1)
        } else if self.eat(b'-') {
            Some(-1)
        } else {
            None
        }
    }

    /// `min..=max` ASCII digits (as many as there are, up to `max`) and how many.
    fn digits(&mut self, min: usize, max: usize) -> Option<(u32, usize)> {
        let count = self
            .0
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if count < min {
            return None;
        }
        let value = self.0[..count]
            .iter()
            .fold(0, |value, digit| value * 10 + u32::from(digit - b'0'));
        self.0 = &self.0[count..];
        Some((value, count))
    }

    /// Any number of digits after the `.`, read as PyYAML does: the first six, padded.
    fn fraction_micros(&mut self) -> u32 {
        let count = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        let micros = (0..6).fold(0, |micros, i| {
            micros * 10
                + self
                    .0
                    .get(i)
                    .filter(|_| i < count)
                    .map_or(0, |d| u32::from(d - b'0'))
        });
        self.0 = &self.0[count..];
        micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn datetime(iso: &str) -> Value {
        json!({"__type__": "datetime", "__value__": iso})
    }

    /// What `yaml.safe_load` makes of `scalar` written plain: `None` if it stays a string.
    fn implicit_marker(scalar: &str) -> Option<Result<Value, String>> {
        resolves_as_timestamp(scalar).then(|| tagged_timestamp_marker(scalar))
    }

    #[test]
    fn safe_dump_forms_become_isoformat_markers() {
        // yaml.safe_dump of datetime/date values, and the isoformat() safe_load gives back.
        for (scalar, iso) in [
            ("2024-01-02 03:04:05+00:00", "2024-01-02T03:04:05+00:00"),
            (
                "2024-01-02 03:04:05.678901+00:00",
                "2024-01-02T03:04:05.678901+00:00",
            ),
            ("2024-02-29 23:59:59+05:30", "2024-02-29T23:59:59+05:30"),
            ("2024-01-02 03:04:05-08:00", "2024-01-02T03:04:05-08:00"),
            ("2024-01-02 03:04:05", "2024-01-02T03:04:05"),
            ("2024-01-02 03:04:05.500000", "2024-01-02T03:04:05.500000"),
        ] {
            assert_eq!(implicit_marker(scalar), Some(Ok(datetime(iso))), "{scalar}");
        }
        assert_eq!(
            implicit_marker("2024-02-29"),
            Some(Ok(json!({"__type__": "date", "__value__": "2024-02-29"})))
        );
    }

    #[test]
    fn the_other_forms_pyyaml_resolves() {
        for (scalar, iso) in [
            (
                "2001-12-14t21:59:43.10-05:00",
                "2001-12-14T21:59:43.100000-05:00",
            ),
            (
                "2001-12-14 21:59:43.10 -5",
                "2001-12-14T21:59:43.100000-05:00",
            ),
            ("2001-12-15T02:59:43.1Z", "2001-12-15T02:59:43.100000+00:00"),
            ("2001-12-15 2:59:43.1234567", "2001-12-15T02:59:43.123456"),
            ("2001-1-2 \t 02:59:43 Z", "2001-01-02T02:59:43+00:00"),
            ("2001-12-14 21:59:43.", "2001-12-14T21:59:43"),
            ("2001-12-14 21:59:43-00:00", "2001-12-14T21:59:43+00:00"),
        ] {
            assert_eq!(implicit_marker(scalar), Some(Ok(datetime(iso))), "{scalar}");
        }
    }

    #[test]
    fn other_plain_scalars_are_not_timestamps() {
        for scalar in [
            "2024-1-2",
            "2024-01-02x",
            "24-01-02",
            "2024-01-02 03:04",
            "2024-01-02 3:4:05",
            "2024-01-02 03:04:05 +",
            "2024-01-02 03:04:05+123",
            "2024-01-02T",
            "hello",
            "",
            "２０２４-01-02",
        ] {
            assert_eq!(implicit_marker(scalar), None, "{scalar}");
        }
    }

    #[test]
    fn impossible_dates_and_times_are_errors_as_in_python() {
        for scalar in [
            "2023-02-29",
            "0000-01-01",
            "2024-13-01",
            "2024-00-10",
            "2024-01-02 24:00:00",
            "2024-01-02 23:60:00",
            "2024-01-02 23:59:60",
            "2024-01-02 03:04:05+24:00",
        ] {
            assert!(matches!(implicit_marker(scalar), Some(Err(_))), "{scalar}");
        }
    }

    #[test]
    fn an_explicit_tag_also_takes_one_digit_dates() {
        assert_eq!(
            tagged_timestamp_marker("2024-1-2"),
            Ok(json!({"__type__": "date", "__value__": "2024-01-02"}))
        );
        assert!(tagged_timestamp_marker("tomorrow").is_err());
    }
}
