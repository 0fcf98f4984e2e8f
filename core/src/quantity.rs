//! Parsing of Kubernetes resource quantities (`64Mi`, `500m`, `1.5`, `2G`) for the limits that
//! runtimes enforce.
//!
//! The API server normalises quantities, but an edge must not trust what it receives: a malformed
//! quantity is an error for the container (`CreateContainerConfigError`), never a panic.

/// A quantity that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid quantity {0:?}: expected a number with an optional suffix (Ki, Mi, Gi, k, M, G, m)"
)]
pub struct InvalidQuantity(pub String);

/// Parses a memory quantity into bytes (rounded up, as the API rounds memory).
pub fn parse_bytes(q: &str) -> Result<u64, InvalidQuantity> {
    let scaled = parse_scaled(q)?;
    Ok(scaled.ceil() as u64)
}

/// Parses a CPU quantity into millicores (`500m` → 500, `1.5` → 1500, `2` → 2000).
pub fn parse_millicores(q: &str) -> Result<u64, InvalidQuantity> {
    let cores = parse_scaled(q)?;
    Ok((cores * 1000.0).ceil() as u64)
}

/// Parses any quantity into thousandths of its unit, rounded up (`500m` → 500, `64Mi` →
/// 67,108,864,000, `3` → 3,000): the one scale requests, limits and quota counts add up in.
pub fn parse_milli(q: &str) -> Result<u64, InvalidQuantity> {
    // Exact, in integers: `700m` is 700, where 0.7 × 1000 in floating point rounds up to 701.
    let err = || InvalidQuantity(q.to_owned());
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(err());
    }
    let digits = format!("{whole}{fraction}");
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| err())?
    };
    let (binary, decimal): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E']).ok_or_else(err)?;
            (0, exp.parse::<i32>().map_err(|_| err())?)
        }
    };
    // value × 1000 = mantissa × 2^binary × 10^(decimal + 3 − fraction digits).
    let exp10 = decimal + 3 - i32::try_from(fraction.len()).map_err(|_| err())?;
    let scaled = mantissa.checked_shl(binary).ok_or_else(err)?;
    let milli = if exp10 >= 0 {
        10u128
            .checked_pow(exp10.unsigned_abs())
            .and_then(|f| scaled.checked_mul(f))
            .ok_or_else(err)?
    } else {
        match 10u128.checked_pow(exp10.unsigned_abs()) {
            Some(d) => scaled.div_ceil(d),
            None => u128::from(scaled > 0),
        }
    };
    u64::try_from(milli).map_err(|_| err())
}

/// Writes thousandths of a unit as Kubernetes writes the quantity: whole numbers plainly,
/// fractions in `m`, and with `binary` (memory, storage) whole multiples of 1024 as `Ki`, `Mi`,
/// `Gi` or `Ti`.
pub fn format_milli(milli: u64, binary: bool) -> String {
    if !milli.is_multiple_of(1000) {
        return format!("{milli}m");
    }
    let whole = milli / 1000;
    if binary && whole > 0 {
        for (suffix, size) in [
            ("Ti", 1u64 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if whole.is_multiple_of(size) {
                return format!("{}{suffix}", whole / size);
            }
        }
    }
    whole.to_string()
}

fn parse_scaled(q: &str) -> Result<f64, InvalidQuantity> {
    let err = || InvalidQuantity(q.to_owned());
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().map_err(|_| err())?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            // Decimal exponent form: 1e3, 12E6.
            let exp = suffix.strip_prefix(['e', 'E']).ok_or_else(err)?;
            10f64.powi(exp.parse::<i32>().map_err(|_| err())?)
        }
    };
    let value = number * factor;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("128974848"), Ok(128_974_848));
        assert_eq!(parse_bytes("129e6"), Ok(129_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("12Qi").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn quantities_in_thousandths_round_trip_as_kubernetes_writes_them() {
        assert_eq!(parse_milli("500m"), Ok(500));
        assert_eq!(parse_milli("64Mi"), Ok(64 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("700m"), Ok(700));
        assert_eq!(parse_milli("0.7"), Ok(700));
        assert_eq!(parse_milli("1.5Gi"), Ok(1536 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("100n"), Ok(1));
        assert_eq!(parse_milli("12e3"), Ok(12_000_000));
        assert!(parse_milli("-1").is_err());
        assert!(parse_milli("1Qi").is_err());
        assert!(parse_milli("").is_err());
        assert_eq!(format_milli(500, false), "500m");
        assert_eq!(format_milli(2000, false), "2");
        assert_eq!(format_milli(64 * 1024 * 1024 * 1000, true), "64Mi");
        assert_eq!(format_milli(1536 * 1024 * 1024 * 1000, true), "1536Mi");
        assert_eq!(format_milli(1000, true), "1");
        assert_eq!(format_milli(0, true), "0");
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_millicores("500m"), Ok(500));
        assert_eq!(parse_millicores("1.5"), Ok(1500));
        assert_eq!(parse_millicores("2"), Ok(2000));
        assert!(parse_millicores("-1").is_err());
    }
}
