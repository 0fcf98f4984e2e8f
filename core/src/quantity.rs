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
    fn cpu_quantities() {
        assert_eq!(parse_millicores("500m"), Ok(500));
        assert_eq!(parse_millicores("1.5"), Ok(1500));
        assert_eq!(parse_millicores("2"), Ok(2000));
        assert!(parse_millicores("-1").is_err());
    }
}
