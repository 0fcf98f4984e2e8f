//! Cron schedules as Kubernetes reads a CronJob's `spec.schedule`: kube-apiserver validates it
//! and kube-controller-manager schedules it with robfig/cron v3's `ParseStandard`, so this module
//! accepts exactly that grammar and words its refusals the same way.
//!
//! - five fields (minute, hour, day of month, month, day of week), each a comma list of `*` or
//!   `?`, `N`, `N-M`, each optionally `/step` (`N/step` means `N-max/step`); months `jan`-`dec`
//!   and days `sun`-`sat` by name; day of week 0-6;
//! - the descriptors `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`),
//!   `@hourly`, and `@every <duration>` (Go's duration syntax, whole seconds, at least one);
//! - a `TZ=<zone> ` or `CRON_TZ=<zone> ` prefix (Kubernetes refuses it in new objects, and
//!   schedules old ones with it).
//!
//! Evaluation is croner's (jiff backend), after the fields were checked here and rewritten in
//! the plain numeric form both read alike: croner also accepts `L`, `W`, `#`, seconds and days
//! of week of 7, which Kubernetes refuses, and reads a day-of-month or day-of-week field as a
//! wildcard only when it is a bare `*`, where robfig counts any `*` or `?` without a step. So
//! this is a gate and a translation, not a second cron parser. A day matches as in Vixie cron:
//! both day fields restricted, either may match; one a wildcard, the other decides.
//!
//! Time zones are IANA names looked up in jiff's database (the system's, else the copy bundled
//! into the binary, as Kubernetes bundles Go's), case-sensitively, as Go's `LoadLocation` on
//! Linux reads them. Across daylight saving changes croner's rules apply: a time skipped by
//! moving clocks forward runs at the first valid time after, a time repeated runs once; robfig
//! skips the former and may run the latter twice.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Why a schedule does not parse, in robfig/cron's words (kube-apiserver quotes them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Nothing to parse.
    #[error("empty spec string")]
    Empty,
    /// Not five fields.
    #[error("expected exactly 5 fields, found {found}: [{fields}]")]
    FieldCount {
        /// How many there were.
        found: usize,
        /// The fields, space-separated.
        fields: String,
    },
    /// An `@` word that is not a descriptor.
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    /// `@every` with a duration Go would not parse.
    #[error("failed to parse duration {descriptor}: {reason}")]
    Duration {
        /// The whole descriptor.
        descriptor: String,
        /// Go's `time.ParseDuration` error.
        reason: String,
    },
    /// A `TZ=` prefix naming no known zone (or with no schedule after it).
    #[error("provided bad location {name}: {source}")]
    Location {
        /// The zone named.
        name: String,
        /// Why it is unknown.
        source: TimeZoneError,
    },
    /// A field item robfig refuses (`too many hyphens: 1-2-3`, `end of range (60) above
    /// maximum (59): 0-60`, `failed to parse int from x: ...`).
    #[error("{0}")]
    Field(String),
}

/// A time zone name that names no zone, in Go's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {0}")]
pub struct TimeZoneError(pub String);

/// Looks up an IANA time zone as Go's `time.LoadLocation` does: `""` and `UTC` are UTC, and any
/// other name must be in the database as spelled (so `Local` is not a zone here).
pub fn time_zone(name: &str) -> Result<TimeZone, TimeZoneError> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    let unknown = || TimeZoneError(name.to_owned());
    let zone = jiff::tz::db().get(name).map_err(|_| unknown())?;
    // jiff finds names case-insensitively; Go on Linux opens the file as named.
    match zone.iana_name() {
        Some(found) if found == name => Ok(zone),
        _ => Err(unknown()),
    }
}

/// What a parsed schedule fires on.
#[derive(Debug, Clone)]
enum Kind {
    /// A cron pattern, in the numeric form croner reads like robfig.
    Cron(Box<croner::Cron>),
    /// `@every`: every so many whole seconds from the time given.
    Every(i64),
    /// A field with no values at all (`,`): robfig parses it and it never fires.
    Never,
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    zone: TimeZone,
}

impl Schedule {
    /// Parses `spec` as robfig/cron's `ParseStandard` does, in `zone` unless it starts with a
    /// `TZ=` or `CRON_TZ=` prefix.
    pub fn parse(spec: &str, zone: TimeZone) -> Result<Self, ScheduleError> {
        if spec.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let (zone, spec) = if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let (prefix, rest) = spec.split_once(' ').unwrap_or((spec, ""));
            let name = prefix.split_once('=').map_or("", |(_, n)| n);
            let zone = time_zone(name).map_err(|source| ScheduleError::Location {
                name: name.to_owned(),
                source,
            })?;
            (zone, rest.trim())
        } else {
            (zone, spec)
        };
        if spec.starts_with('@') {
            return Ok(Self {
                kind: descriptor(spec)?,
                zone,
            });
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError::FieldCount {
                found: fields.len(),
                fields: fields.join(" "),
            });
        }
        let mut numeric = Vec::with_capacity(5);
        for (field, bounds) in fields.iter().zip(FIELDS.iter()) {
            match field_items(field, bounds)? {
                Some(items) => numeric.push(items),
                None => {
                    return Ok(Self {
                        kind: Kind::Never,
                        zone,
                    });
                }
            }
        }
        let pattern = numeric.join(" ");
        let cron = croner::parser::CronParser::new()
            .parse(&pattern)
            .map_err(|e| ScheduleError::Field(format!("{spec}: {e}")))?;
        Ok(Self {
            kind: Kind::Cron(Box::new(cron)),
            zone,
        })
    }

    /// The time zone the schedule is read in.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The first time the schedule fires strictly after `after` (robfig's `Next`), or `None`
    /// when it never does (a date no month has, such as `0 0 30 2 *`).
    pub fn next(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Never => None,
            Kind::Every(seconds) => {
                let whole = Timestamp::from_second(after.as_second()).ok()?;
                whole.checked_add(SignedDuration::from_secs(*seconds)).ok()
            }
            Kind::Cron(cron) => {
                let start = after.to_zoned(self.zone.clone());
                cron.find_next_occurrence(&start, false)
                    .ok()
                    .map(|z| z.timestamp())
            }
        }
    }
}

/// A field's range and names.
struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Minute, hour, day of month, month, day of week, with robfig's bounds.
const FIELDS: [Bounds; 5] = [
    Bounds {
        min: 0,
        max: 59,
        names: &[],
    },
    Bounds {
        min: 0,
        max: 23,
        names: &[],
    },
    Bounds {
        min: 1,
        max: 31,
        names: &[],
    },
    Bounds {
        min: 1,
        max: 12,
        names: MONTHS,
    },
    Bounds {
        min: 0,
        max: 6,
        names: DAYS,
    },
];

/// robfig's `getField`: a comma list of ranges (empty items skipped), each checked as
/// `getRange` checks it, rewritten as croner's numeric items; a field with a wildcard item
/// becomes `*` (robfig's star bit, which decides how the day fields combine). `None`: no items.
fn field_items(field: &str, bounds: &Bounds) -> Result<Option<String>, ScheduleError> {
    let mut items = Vec::new();
    let mut star = false;
    for item in field.split(',').filter(|i| !i.is_empty()) {
        let (start, end, step, wildcard) = range(item, bounds)?;
        star |= wildcard;
        items.push(match (start == end, step) {
            (true, _) => start.to_string(),
            (false, 1) => format!("{start}-{end}"),
            (false, _) => format!("{start}-{end}/{step}"),
        });
    }
    if items.is_empty() {
        return Ok(None);
    }
    Ok(Some(if star {
        "*".to_owned()
    } else {
        items.join(",")
    }))
}

/// robfig's `getRange`: `(start, end, step, star)` of one item.
fn range(expr: &str, b: &Bounds) -> Result<(u32, u32, u32, bool), ScheduleError> {
    let fail = |m: String| ScheduleError::Field(m);
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut star) = if matches!(low_and_high[0], "*" | "?") {
        (b.min, b.max, true)
    } else {
        let start = int_or_name(low_and_high[0], b.names)?;
        let end = match low_and_high.len() {
            1 => start,
            2 => int_or_name(low_and_high[1], b.names)?,
            _ => return Err(fail(format!("too many hyphens: {expr}"))),
        };
        (start, end, false)
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = int(range_and_step[1])?;
            if single {
                end = b.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
        _ => return Err(fail(format!("too many slashes: {expr}"))),
    };
    if start < b.min {
        return Err(fail(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        )));
    }
    if end > b.max {
        return Err(fail(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        )));
    }
    if start > end {
        return Err(fail(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    if step == 0 {
        return Err(fail(format!(
            "step of range should be a positive number: {expr}"
        )));
    }
    Ok((start, end, step, star))
}

fn int_or_name(expr: &str, names: &[&str]) -> Result<u32, ScheduleError> {
    let lower = expr.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        // Months count from 1, days from 0.
        let offset = if names.len() == 12 { 1 } else { 0 };
        return u32::try_from(i).map(|i| i + offset).map_err(|_| {
            ScheduleError::Field(format!("failed to parse int from {expr}: out of range"))
        });
    }
    int(expr)
}

/// robfig's `mustParseInt` over Go's `strconv.Atoi`.
fn int(expr: &str) -> Result<u32, ScheduleError> {
    let digits = expr.strip_prefix(['+', '-']).unwrap_or(expr);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ScheduleError::Field(format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": invalid syntax"
        )));
    }
    let value: i64 = expr.parse().map_err(|_| {
        ScheduleError::Field(format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": value out of range"
        ))
    })?;
    if value < 0 {
        return Err(ScheduleError::Field(format!(
            "negative number ({value}) not allowed: {expr}"
        )));
    }
    // Anything past u32 is past every field's maximum, which is what robfig then says.
    Ok(u32::try_from(value).unwrap_or(u32::MAX))
}

/// robfig's `parseDescriptor` (case-sensitive).
fn descriptor(spec: &str) -> Result<Kind, ScheduleError> {
    let pattern = match spec {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            if let Some(text) = spec.strip_prefix("@every ") {
                let nanos = go_duration(text).map_err(|reason| ScheduleError::Duration {
                    descriptor: spec.to_owned(),
                    reason,
                })?;
                // robfig's `Every`: at least a second, rounded down to whole seconds.
                let seconds = (nanos / 1_000_000_000).max(1);
                return Ok(Kind::Every(i64::try_from(seconds).unwrap_or(i64::MAX)));
            }
            return Err(ScheduleError::Descriptor(spec.to_owned()));
        }
    };
    croner::parser::CronParser::new()
        .parse(pattern)
        .map(|c| Kind::Cron(Box::new(c)))
        .map_err(|e| ScheduleError::Field(e.to_string()))
}

/// Go's `time.ParseDuration`, in nanoseconds (negative ones as such), with its error words.
fn go_duration(text: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration \"{text}\"");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale: i128 = match unit {
            "" => return Err(format!("time: missing unit in duration \"{text}\"")),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(format!(
                    "time: unknown unit \"{other}\" in duration \"{text}\""
                ));
            }
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(invalid)?;
        let mut divisor: i128 = 1;
        let mut digits: i128 = 0;
        for c in fraction.bytes().take(18) {
            digits = digits * 10 + i128::from(c - b'0');
            divisor *= 10;
        }
        part += digits * scale / divisor;
        total = total.checked_add(part).ok_or_else(invalid)?;
        if total > i128::from(i64::MAX) {
            return Err(invalid());
        }
    }
    Ok(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> Timestamp {
        t.parse().expect("timestamp")
    }

    fn utc(spec: &str) -> Schedule {
        Schedule::parse(spec, TimeZone::UTC).expect(spec)
    }

    fn refusal(spec: &str) -> String {
        Schedule::parse(spec, TimeZone::UTC)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("{spec} parsed"))
    }

    fn next_n(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = at(from);
        (0..n)
            .filter_map(|_| {
                t = s.next(t)?;
                Some(t.to_string())
            })
            .collect()
    }

    #[test]
    fn next_times_are_strictly_after_and_on_whole_minutes() {
        let every = utc("*/1 * * * *");
        assert_eq!(
            next_n(&every, "2026-01-01T00:00:00Z", 2),
            ["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"]
        );
        assert_eq!(
            every.next(at("2026-01-01T00:00:59.9Z")),
            Some(at("2026-01-01T00:01:00Z"))
        );
        let quarter = utc("0/15 9-17 * * mon-FRI");
        assert_eq!(
            next_n(&quarter, "2026-01-02T17:40:00Z", 2),
            // Friday 17:45, then Monday 09:00.
            ["2026-01-02T17:45:00Z", "2026-01-05T09:00:00Z"]
        );
        assert_eq!(
            next_n(&utc("@hourly"), "2026-01-01T00:30:00Z", 1),
            ["2026-01-01T01:00:00Z"]
        );
        assert_eq!(
            next_n(&utc("@weekly"), "2026-01-01T00:00:00Z", 1),
            ["2026-01-04T00:00:00Z"]
        );
        assert_eq!(
            next_n(&utc("0 0 1 jan ?"), "2026-06-01T00:00:00Z", 1),
            ["2027-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn day_fields_combine_as_vixie_cron_does() {
        // Both restricted: the 13th or a Friday.
        assert_eq!(
            next_n(&utc("0 0 13 * 5"), "2026-02-01T00:00:00Z", 3),
            [
                "2026-02-06T00:00:00Z",
                "2026-02-13T00:00:00Z",
                "2026-02-20T00:00:00Z"
            ]
        );
        // A day-of-month wildcard with step 1 is still a wildcard: Fridays only.
        assert_eq!(
            next_n(&utc("0 0 */1 * 5"), "2026-02-01T00:00:00Z", 2),
            ["2026-02-06T00:00:00Z", "2026-02-13T00:00:00Z"]
        );
        // With a step it is not: every other day or a Friday.
        assert_eq!(
            next_n(&utc("0 0 */2 * 5"), "2026-02-01T00:00:00Z", 3),
            [
                "2026-02-03T00:00:00Z",
                "2026-02-05T00:00:00Z",
                "2026-02-06T00:00:00Z"
            ]
        );
    }

    #[test]
    fn every_counts_whole_seconds_from_the_time_given() {
        let s = utc("@every 1m30s");
        assert_eq!(
            s.next(at("2026-01-01T00:00:10.7Z")),
            Some(at("2026-01-01T00:01:40Z"))
        );
        assert_eq!(
            utc("@every 10ms").next(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:00:01Z")),
            "at least a second"
        );
        assert_eq!(
            utc("@every 1.5h").next(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T01:30:00Z"))
        );
    }

    #[test]
    fn time_zones_move_the_wall_clock() {
        let zone = time_zone("America/New_York").expect("zone");
        let s = Schedule::parse("0 9 * * *", zone).expect("schedule");
        // 09:00 in New York is 14:00 UTC in winter, 13:00 in summer.
        assert_eq!(
            s.next(at("2026-01-15T00:00:00Z")),
            Some(at("2026-01-15T14:00:00Z"))
        );
        assert_eq!(
            s.next(at("2026-07-15T00:00:00Z")),
            Some(at("2026-07-15T13:00:00Z"))
        );
        // The legacy prefix wins over the zone given.
        let prefixed = Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *", TimeZone::UTC).expect("tz");
        assert_eq!(
            prefixed.next(at("2026-01-15T00:00:00Z")),
            Some(at("2026-01-16T00:00:00Z"))
        );
        // A time skipped by the spring change runs at the first valid time after it.
        let zone = time_zone("Europe/Berlin").expect("zone");
        let s = Schedule::parse("30 2 * * *", zone).expect("schedule");
        assert_eq!(
            s.next(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn zones_are_looked_up_as_go_does() {
        assert!(time_zone("Europe/Paris").is_ok());
        assert!(time_zone("UTC").is_ok());
        assert_eq!(
            time_zone("europe/paris").err().map(|e| e.to_string()),
            Some("unknown time zone europe/paris".into())
        );
        assert!(time_zone("Mars/Olympus_Mons").is_err());
        assert!(time_zone("Local").is_err());
    }

    #[test]
    fn refusals_are_worded_as_robfig_words_them() {
        assert_eq!(
            refusal("* * * *"),
            "expected exactly 5 fields, found 4: [* * * *]"
        );
        assert_eq!(
            refusal("0 0 0 * * *"),
            "expected exactly 5 fields, found 6: [0 0 0 * * *]"
        );
        assert_eq!(
            refusal("@fortnightly"),
            "unrecognized descriptor: @fortnightly"
        );
        assert_eq!(
            refusal("60 * * * *"),
            "end of range (60) above maximum (59): 60"
        );
        assert_eq!(
            refusal("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(
            refusal("5-3 * * * *"),
            "beginning of range (5) beyond end of range (3): 5-3"
        );
        assert_eq!(refusal("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(refusal("*/5/2 * * * *"), "too many slashes: */5/2");
        assert_eq!(
            refusal("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(
            refusal("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        // croner's extensions are not Kubernetes'.
        assert_eq!(
            refusal("0 0 L * *"),
            "failed to parse int from L: strconv.Atoi: parsing \"L\": invalid syntax"
        );
        assert_eq!(
            refusal("0 0 * * 7"),
            "end of range (7) above maximum (6): 7"
        );
        assert_eq!(
            refusal("@every 1d"),
            "failed to parse duration @every 1d: time: unknown unit \"d\" in duration \"1d\""
        );
        assert_eq!(
            refusal("TZ=Nowhere/City * * * * *"),
            "provided bad location Nowhere/City: unknown time zone Nowhere/City"
        );
        assert_eq!(refusal(""), "empty spec string");
    }

    #[test]
    fn a_date_no_month_has_never_comes() {
        let s = utc("0 0 30 2 *");
        assert_eq!(s.next(at("2026-01-01T00:00:00Z")), None);
        assert_eq!(utc(", * * * *").next(at("2026-01-01T00:00:00Z")), None);
    }
}
