//! Registers and coils to twin values and back: the one place that decides what the bits on a
//! Modbus device mean, so reads, writes and config validation cannot disagree.
//!
//! The rules, for a property of model type `kind` over `limit` registers with `scale`:
//!
//! | where | kind | limit | read | write |
//! | --- | --- | --- | --- | --- |
//! | coil / discrete input | BOOLEAN | 1 | the bit | the bit |
//! | coil / discrete input | INT | 1 | 0 or 1 | 0 or 1 only |
//! | register | INT | 1, 2, 4 | i16, i32, i64 × scale, rounded | ÷ scale, rounded, range-checked |
//! | register | FLOAT, DOUBLE | 1 | i16 × scale | ÷ scale, rounded, range-checked to i16 |
//! | register | FLOAT, DOUBLE | 2 | IEEE 754 f32 × scale | ÷ scale as f32 (must be finite) |
//! | register | FLOAT, DOUBLE | 4 | IEEE 754 f64 × scale | ÷ scale as f64 |
//! | register | BOOLEAN | 1, 2, 4 | any bit set | 1 or 0 |
//! | register | STRING | 1, 2, 4 | 2×limit bytes of UTF-8, trailing NULs dropped | padded with NULs |
//! | register | BYTES | 1, 2, 4 | 2×limit bytes | padded with zeros |
//!
//! Multi-register values are big-endian (the first register holds the most significant word, each
//! register its high byte first), as Modbus itself is. A device that differs says so with
//! `isRegisterSwap` (reverse the register order) and `isSwap` (swap the two bytes of each
//! register); both are applied to the raw registers before the value is read, and after it is
//! written, so a write reads back as written.

use wedge_core::twin::{PropertyType, TwinValue};

/// A value that does not fit its registers, or registers that do not hold a value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    /// The device sent another number of registers or bits than asked for.
    #[error("expected {expected} {what}, got {got}")]
    WrongLength {
        /// `registers` or `bits`.
        what: &'static str,
        /// How many the property spans.
        expected: usize,
        /// How many arrived.
        got: usize,
    },
    /// The value's type is not the property's.
    #[error("a {kind:?} property cannot take {value:?}")]
    TypeMismatch {
        /// The property's type.
        kind: PropertyType,
        /// The value given.
        value: TwinValue,
    },
    /// The value, once divided by the scale, does not fit the registers.
    #[error("{value} does not fit in {limit} register(s) (after scaling)")]
    OutOfRange {
        /// The value, divided by the scale.
        value: f64,
        /// The registers it would span.
        limit: u16,
    },
    /// The text or bytes are longer than the registers.
    #[error("{len} bytes do not fit in {limit} register(s)")]
    TooLong {
        /// The length given.
        len: usize,
        /// The registers the property spans.
        limit: u16,
    },
    /// This type cannot live in this kind of register at this width (caught at config time; kept
    /// here so the codec is total on its own).
    #[error("a {kind:?} property cannot span {limit} {what}")]
    Unsupported {
        /// The property's type.
        kind: PropertyType,
        /// The width.
        limit: u16,
        /// `registers` or `bits`.
        what: &'static str,
    },
}

/// How one property's value is laid out on the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Codec {
    /// The property's type in the DeviceModel.
    pub kind: PropertyType,
    /// How many registers (or bits) it spans.
    pub limit: u16,
    /// What a raw number is multiplied by to give the value.
    pub scale: f64,
    /// Swap the two bytes of each register.
    pub swap_bytes: bool,
    /// Reverse the order of the registers.
    pub swap_registers: bool,
}

impl Codec {
    /// A codec with scale 1 and no swaps.
    pub fn new(kind: PropertyType, limit: u16) -> Self {
        Self {
            kind,
            limit,
            scale: 1.0,
            swap_bytes: false,
            swap_registers: false,
        }
    }

    /// Whether the property can live in single bits (coils, discrete inputs).
    pub fn fits_bits(&self) -> bool {
        matches!(self.kind, PropertyType::Boolean | PropertyType::Int) && self.limit == 1
    }

    /// Whether the property can live in 16-bit registers.
    pub fn fits_registers(&self) -> bool {
        matches!(self.limit, 1 | 2 | 4)
    }

    /// The value of a bit-sized property.
    pub fn decode_bits(&self, bits: &[bool]) -> Result<TwinValue, CodecError> {
        if !self.fits_bits() {
            return Err(self.unsupported("bits"));
        }
        let [bit] = bits else {
            return Err(CodecError::WrongLength {
                what: "bits",
                expected: 1,
                got: bits.len(),
            });
        };
        Ok(match self.kind {
            PropertyType::Int => TwinValue::Integer(i64::from(*bit)),
            _ => TwinValue::Boolean(*bit),
        })
    }

    /// The bit that holds `value`.
    pub fn encode_bit(&self, value: &TwinValue) -> Result<bool, CodecError> {
        if !self.fits_bits() {
            return Err(self.unsupported("bits"));
        }
        match (self.kind, value) {
            (PropertyType::Boolean, TwinValue::Boolean(b)) => Ok(*b),
            (PropertyType::Int, TwinValue::Integer(i @ (0 | 1))) => Ok(*i == 1),
            (PropertyType::Int, TwinValue::Integer(i)) => Err(CodecError::OutOfRange {
                value: *i as f64,
                limit: 1,
            }),
            _ => Err(self.mismatch(value)),
        }
    }

    /// The value held in `registers`, as the device sent them.
    pub fn decode_registers(&self, registers: &[u16]) -> Result<TwinValue, CodecError> {
        if !self.fits_registers() {
            return Err(self.unsupported("registers"));
        }
        if registers.len() != usize::from(self.limit) {
            return Err(CodecError::WrongLength {
                what: "registers",
                expected: usize::from(self.limit),
                got: registers.len(),
            });
        }
        let bytes = self.unswap(registers);
        Ok(match self.kind {
            PropertyType::Int => {
                let raw = signed(&bytes);
                if self.scale == 1.0 {
                    TwinValue::Integer(raw)
                } else {
                    TwinValue::Integer((raw as f64 * self.scale).round() as i64)
                }
            }
            PropertyType::Float | PropertyType::Double => {
                let raw = match bytes.as_slice() {
                    [a, b, c, d] => f64::from(f32::from_be_bytes([*a, *b, *c, *d])),
                    [a, b, c, d, e, f, g, h] => {
                        f64::from_be_bytes([*a, *b, *c, *d, *e, *f, *g, *h])
                    }
                    _ => signed(&bytes) as f64,
                };
                TwinValue::Float(raw * self.scale)
            }
            PropertyType::Boolean => TwinValue::Boolean(bytes.iter().any(|b| *b != 0)),
            PropertyType::String => {
                let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                TwinValue::Text(String::from_utf8_lossy(&bytes[..end]).into_owned())
            }
            PropertyType::Bytes => TwinValue::Bytes(bytes),
        })
    }

    /// The registers to write for `value`, in the order the device wants them.
    pub fn encode_registers(&self, value: &TwinValue) -> Result<Vec<u16>, CodecError> {
        if !self.fits_registers() {
            return Err(self.unsupported("registers"));
        }
        let width = usize::from(self.limit) * 2;
        let bytes: Vec<u8> = match (self.kind, value) {
            (PropertyType::Int, TwinValue::Integer(i)) => {
                let raw = if self.scale == 1.0 {
                    *i
                } else {
                    self.unscale_to_int(*i as f64)?
                };
                self.int_bytes(raw)?
            }
            (
                PropertyType::Float | PropertyType::Double,
                v @ (TwinValue::Float(_) | TwinValue::Integer(_)),
            ) => {
                // The pattern above admits only numbers.
                let v = v.as_f64().unwrap_or_default();
                let f = v / self.scale;
                match self.limit {
                    1 => self.int_bytes(self.unscale_to_int(v)?)?,
                    2 => {
                        let narrow = f as f32;
                        if !narrow.is_finite() {
                            return Err(CodecError::OutOfRange {
                                value: f,
                                limit: self.limit,
                            });
                        }
                        narrow.to_be_bytes().to_vec()
                    }
                    _ => {
                        if !f.is_finite() {
                            return Err(CodecError::OutOfRange {
                                value: f,
                                limit: self.limit,
                            });
                        }
                        f.to_be_bytes().to_vec()
                    }
                }
            }
            (PropertyType::Boolean, TwinValue::Boolean(b)) => self.int_bytes(i64::from(*b))?,
            (PropertyType::String, TwinValue::Text(s)) => pad(s.as_bytes(), width, self.limit)?,
            (PropertyType::Bytes, TwinValue::Bytes(b)) => pad(b, width, self.limit)?,
            _ => return Err(self.mismatch(value)),
        };
        Ok(self.swap(&bytes))
    }

    /// `value ÷ scale`, rounded to an integer (range is checked by [`Self::int_bytes`]).
    fn unscale_to_int(&self, value: f64) -> Result<i64, CodecError> {
        let raw = (value / self.scale).round();
        // i64::MAX as f64 rounds up to 2^63, so the upper bound is exclusive.
        if !raw.is_finite() || raw < i64::MIN as f64 || raw >= i64::MAX as f64 {
            return Err(CodecError::OutOfRange {
                value: raw,
                limit: self.limit,
            });
        }
        Ok(raw as i64)
    }

    /// `raw` as a big-endian signed integer of `limit` registers.
    fn int_bytes(&self, raw: i64) -> Result<Vec<u8>, CodecError> {
        let out_of_range = || CodecError::OutOfRange {
            value: raw as f64,
            limit: self.limit,
        };
        Ok(match self.limit {
            1 => i16::try_from(raw)
                .map_err(|_| out_of_range())?
                .to_be_bytes()
                .to_vec(),
            2 => i32::try_from(raw)
                .map_err(|_| out_of_range())?
                .to_be_bytes()
                .to_vec(),
            _ => raw.to_be_bytes().to_vec(),
        })
    }

    /// The value's bytes, most significant first, from the registers as the device orders them.
    fn unswap(&self, registers: &[u16]) -> Vec<u8> {
        let mut words = registers.to_vec();
        if self.swap_registers {
            words.reverse();
        }
        words
            .iter()
            .flat_map(|w| {
                let w = if self.swap_bytes { w.swap_bytes() } else { *w };
                w.to_be_bytes()
            })
            .collect()
    }

    /// The inverse of [`Self::unswap`].
    fn swap(&self, bytes: &[u8]) -> Vec<u16> {
        let mut words: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| {
                let w = u16::from_be_bytes([c[0], c[1]]);
                if self.swap_bytes { w.swap_bytes() } else { w }
            })
            .collect();
        if self.swap_registers {
            words.reverse();
        }
        words
    }

    fn mismatch(&self, value: &TwinValue) -> CodecError {
        CodecError::TypeMismatch {
            kind: self.kind,
            value: value.clone(),
        }
    }

    fn unsupported(&self, what: &'static str) -> CodecError {
        CodecError::Unsupported {
            kind: self.kind,
            limit: self.limit,
            what,
        }
    }
}

/// A big-endian two's-complement integer of 2, 4 or 8 bytes.
fn signed(bytes: &[u8]) -> i64 {
    match bytes {
        [a, b] => i64::from(i16::from_be_bytes([*a, *b])),
        [a, b, c, d] => i64::from(i32::from_be_bytes([*a, *b, *c, *d])),
        [a, b, c, d, e, f, g, h] => i64::from_be_bytes([*a, *b, *c, *d, *e, *f, *g, *h]),
        _ => 0,
    }
}

fn pad(bytes: &[u8], width: usize, limit: u16) -> Result<Vec<u8>, CodecError> {
    if bytes.len() > width {
        return Err(CodecError::TooLong {
            len: bytes.len(),
            limit,
        });
    }
    let mut out = bytes.to_vec();
    out.resize(width, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(kind: PropertyType, limit: u16, scale: f64) -> Codec {
        Codec {
            scale,
            ..Codec::new(kind, limit)
        }
    }

    fn float(v: &TwinValue) -> f64 {
        v.as_f64().expect("a number")
    }

    #[test]
    fn coils_are_booleans_or_zero_one_ints() {
        let b = Codec::new(PropertyType::Boolean, 1);
        assert_eq!(b.decode_bits(&[true]), Ok(TwinValue::Boolean(true)));
        assert_eq!(b.encode_bit(&TwinValue::Boolean(false)), Ok(false));
        let i = Codec::new(PropertyType::Int, 1);
        assert_eq!(i.decode_bits(&[true]), Ok(TwinValue::Integer(1)));
        assert_eq!(i.encode_bit(&TwinValue::Integer(1)), Ok(true));
        assert!(matches!(
            i.encode_bit(&TwinValue::Integer(2)),
            Err(CodecError::OutOfRange { .. })
        ));
        assert!(b.decode_bits(&[true, false]).is_err());
        assert!(!Codec::new(PropertyType::String, 1).fits_bits());
        assert!(!Codec::new(PropertyType::Float, 1).fits_bits());
        assert!(matches!(
            b.encode_bit(&TwinValue::Integer(1)),
            Err(CodecError::TypeMismatch { .. })
        ));
    }

    #[test]
    fn one_register_ints_are_signed_and_scaled() {
        let c = Codec::new(PropertyType::Int, 1);
        assert_eq!(c.decode_registers(&[215]), Ok(TwinValue::Integer(215)));
        assert_eq!(c.decode_registers(&[0xFFFF]), Ok(TwinValue::Integer(-1)));
        assert_eq!(
            c.encode_registers(&TwinValue::Integer(-2)),
            Ok(vec![0xFFFE])
        );
        assert!(matches!(
            c.encode_registers(&TwinValue::Integer(40_000)),
            Err(CodecError::OutOfRange { .. })
        ));
        let scaled = codec(PropertyType::Int, 1, 10.0);
        assert_eq!(scaled.decode_registers(&[7]), Ok(TwinValue::Integer(70)));
        assert_eq!(
            scaled.encode_registers(&TwinValue::Integer(74)),
            Ok(vec![7])
        );
    }

    #[test]
    fn two_and_four_register_ints_are_big_endian() {
        let c = Codec::new(PropertyType::Int, 2);
        assert_eq!(
            c.decode_registers(&[0x0001, 0x0000]),
            Ok(TwinValue::Integer(65_536))
        );
        assert_eq!(
            c.encode_registers(&TwinValue::Integer(-70_000)),
            Ok(vec![0xFFFE, 0xEE90])
        );
        assert!(c.encode_registers(&TwinValue::Integer(1 << 40)).is_err());
        let c = Codec::new(PropertyType::Int, 4);
        assert_eq!(
            c.decode_registers(&[0, 0, 1, 2]),
            Ok(TwinValue::Integer(0x0001_0002))
        );
        assert_eq!(
            c.encode_registers(&TwinValue::Integer(1 << 40)),
            Ok(vec![0, 0x100, 0, 0])
        );
    }

    #[test]
    fn floats_in_one_register_are_scaled_i16() {
        let c = codec(PropertyType::Float, 1, 0.1);
        assert!((float(&c.decode_registers(&[215]).expect("reads")) - 21.5).abs() < 1e-9);
        assert!((float(&c.decode_registers(&[0xFFF6]).expect("reads")) + 1.0).abs() < 1e-9);
        assert_eq!(c.encode_registers(&TwinValue::Float(22.04)), Ok(vec![220]));
        assert_eq!(c.encode_registers(&TwinValue::Integer(3)), Ok(vec![30]));
        assert!(matches!(
            c.encode_registers(&TwinValue::Float(5000.0)),
            Err(CodecError::OutOfRange { .. })
        ));
    }

    #[test]
    fn floats_in_two_registers_are_f32_and_four_f64() {
        let c = Codec::new(PropertyType::Float, 2);
        assert_eq!(
            c.decode_registers(&[0x4148, 0x0000]),
            Ok(TwinValue::Float(12.5))
        );
        assert_eq!(
            c.encode_registers(&TwinValue::Float(12.5)),
            Ok(vec![0x4148, 0])
        );
        assert!(c.encode_registers(&TwinValue::Float(1e300)).is_err());
        let scaled = codec(PropertyType::Double, 2, 2.0);
        assert_eq!(
            scaled.decode_registers(&[0x4148, 0]),
            Ok(TwinValue::Float(25.0))
        );
        let d = Codec::new(PropertyType::Double, 4);
        let regs = d
            .encode_registers(&TwinValue::Float(-0.1))
            .expect("encodes");
        assert_eq!(regs.len(), 4);
        assert_eq!(d.decode_registers(&regs), Ok(TwinValue::Float(-0.1)));
    }

    #[test]
    fn swaps_apply_to_bytes_and_register_order() {
        let words = Codec {
            swap_registers: true,
            ..Codec::new(PropertyType::Float, 2)
        };
        assert_eq!(
            words.decode_registers(&[0x0000, 0x4148]),
            Ok(TwinValue::Float(12.5))
        );
        assert_eq!(
            words.encode_registers(&TwinValue::Float(12.5)),
            Ok(vec![0, 0x4148])
        );
        let bytes = Codec {
            swap_bytes: true,
            ..Codec::new(PropertyType::Int, 1)
        };
        assert_eq!(bytes.decode_registers(&[0x0100]), Ok(TwinValue::Integer(1)));
        let both = Codec {
            swap_bytes: true,
            swap_registers: true,
            ..Codec::new(PropertyType::Int, 2)
        };
        let regs = both
            .encode_registers(&TwinValue::Integer(0x0102_0304))
            .expect("encodes");
        assert_eq!(regs, vec![0x0403, 0x0201]);
        assert_eq!(
            both.decode_registers(&regs),
            Ok(TwinValue::Integer(0x0102_0304))
        );
    }

    #[test]
    fn booleans_strings_and_bytes_in_registers() {
        let b = Codec::new(PropertyType::Boolean, 1);
        assert_eq!(b.decode_registers(&[2]), Ok(TwinValue::Boolean(true)));
        assert_eq!(b.decode_registers(&[0]), Ok(TwinValue::Boolean(false)));
        assert_eq!(b.encode_registers(&TwinValue::Boolean(true)), Ok(vec![1]));
        let s = Codec::new(PropertyType::String, 2);
        assert_eq!(
            s.encode_registers(&TwinValue::Text("abc".into())),
            Ok(vec![0x6162, 0x6300])
        );
        assert_eq!(
            s.decode_registers(&[0x6162, 0x6300]),
            Ok(TwinValue::Text("abc".into()))
        );
        assert!(matches!(
            s.encode_registers(&TwinValue::Text("too long".into())),
            Err(CodecError::TooLong { len: 8, limit: 2 })
        ));
        let by = Codec::new(PropertyType::Bytes, 1);
        assert_eq!(
            by.decode_registers(&[0x0102]),
            Ok(TwinValue::Bytes(vec![1, 2]))
        );
        assert_eq!(
            by.encode_registers(&TwinValue::Bytes(vec![9])),
            Ok(vec![0x0900])
        );
    }

    #[test]
    fn wrong_widths_and_types_are_errors() {
        let c = Codec::new(PropertyType::Int, 2);
        assert!(matches!(
            c.decode_registers(&[1]),
            Err(CodecError::WrongLength { .. })
        ));
        assert!(matches!(
            c.encode_registers(&TwinValue::Text("1".into())),
            Err(CodecError::TypeMismatch { .. })
        ));
        let three = Codec::new(PropertyType::Int, 3);
        assert!(!three.fits_registers());
        assert!(matches!(
            three.decode_registers(&[0, 0, 0]),
            Err(CodecError::Unsupported { .. })
        ));
    }
}
