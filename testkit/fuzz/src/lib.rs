//! Inputs for the fuzz tests of every decoder that takes outside bytes.
//!
//! Each fuzz test is a `bolero::check!()` in the crate that owns the decoder, so `cargo test`
//! runs a short, bounded pass of it (bolero's random engine: 1,000 inputs unless
//! `BOLERO_RANDOM_ITERATIONS` says otherwise, plus every file kept under the test's
//! `__fuzz__/<test>/corpus` and `crashes` directories). A longer run is the same test with a
//! larger `BOLERO_RANDOM_ITERATIONS`.
//!
//! Random bytes alone rarely get past a decoder's first check (a JSON parser, a frame header),
//! so most tests take a [`Mutation`]: a valid seed input picked from the test's own examples with
//! a few random edits made to it. The number of edits is bounded by bolero's input length, so every
//! input stays small.
//!
//! This is a crate of its own, not a module of `wedge-testkit`, so that the small crates' tests
//! need not build testkit's fixtures (a registry client, a CRI client) to be fuzzed.

use bolero::TypeGenerator;

/// A few edits to one of a test's valid seed inputs.
#[derive(Debug, Clone, TypeGenerator)]
pub struct Mutation {
    seed: u16,
    edits: Vec<Edit>,
}

/// One edit. Positions wrap around the input's length, so every edit lands.
#[derive(Debug, Clone, TypeGenerator)]
enum Edit {
    /// Flip one bit.
    Flip { at: u16, bit: u8 },
    /// Overwrite one byte.
    Set { at: u16, byte: u8 },
    /// Insert random bytes (at most 16).
    Insert { at: u16, bytes: Vec<u8> },
    /// Insert a token that decoders give meaning to.
    Token { at: u16, which: u8 },
    /// Remove up to 255 bytes.
    Remove { at: u16, len: u8 },
    /// Cut the input short.
    Truncate { at: u16 },
    /// Copy a run of the input elsewhere in it (nesting, repeated fields).
    Duplicate { from: u16, len: u8, at: u16 },
}

/// Bytes that mean something to JSON, YAML, selectors, paths, quantities and frames.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\\u0000",
    b"\\ud800",
    b"\xff\xfe",
    b"\n",
    b"- ",
    b"&a",
    b"*a",
    b"!!binary",
    b"---",
    b"=",
    b"!=",
    b"==",
    b" in (",
    b")",
    b"notin",
    b"!",
    b"/",
    b"..",
    b"%",
    b"%00",
    b"?",
    b"&",
    b"#",
    b"*",
    b"\0",
    b"Mi",
    b"m",
    b"e3",
    b".",
    b"+",
    b"\x80",
    b"\xe2\x80\xae",
];

impl Mutation {
    /// The seed this mutation picks from `seeds`, with its edits made.
    pub fn apply(&self, seeds: &[&[u8]]) -> Vec<u8> {
        let mut out = match seeds.len() {
            0 => Vec::new(),
            n => seeds[usize::from(self.seed) % n].to_vec(),
        };
        for edit in &self.edits {
            edit.apply(&mut out);
        }
        out
    }

    /// [`Mutation::apply`] as text, for decoders that take `&str` (invalid UTF-8 replaced).
    pub fn apply_str(&self, seeds: &[&str]) -> String {
        let seeds: Vec<&[u8]> = seeds.iter().map(|s| s.as_bytes()).collect();
        String::from_utf8_lossy(&self.apply(&seeds)).into_owned()
    }
}

impl Edit {
    fn apply(&self, out: &mut Vec<u8>) {
        // A position in 0..=len (inserting at the end is allowed).
        let at = |at: u16, len: usize| usize::from(at) % (len + 1);
        match self {
            Edit::Flip { at: i, bit } => {
                if !out.is_empty() {
                    let i = usize::from(*i) % out.len();
                    out[i] ^= 1 << (bit % 8);
                }
            }
            Edit::Set { at: i, byte } => {
                if !out.is_empty() {
                    let i = usize::from(*i) % out.len();
                    out[i] = *byte;
                }
            }
            Edit::Insert { at: i, bytes } => {
                let i = at(*i, out.len());
                let bytes = &bytes[..bytes.len().min(16)];
                out.splice(i..i, bytes.iter().copied());
            }
            Edit::Token { at: i, which } => {
                let i = at(*i, out.len());
                let token = TOKENS[usize::from(*which) % TOKENS.len()];
                out.splice(i..i, token.iter().copied());
            }
            Edit::Remove { at: i, len } => {
                let i = at(*i, out.len());
                let end = (i + usize::from(*len)).min(out.len());
                out.drain(i..end);
            }
            Edit::Truncate { at: i } => {
                let i = at(*i, out.len());
                out.truncate(i);
            }
            Edit::Duplicate { from, len, at: i } => {
                if out.is_empty() {
                    return;
                }
                let from = usize::from(*from) % out.len();
                let end = (from + usize::from(*len)).min(out.len());
                let run = out[from..end].to_vec();
                let i = at(*i, out.len());
                out.splice(i..i, run);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_within_the_input() {
        let m = Mutation {
            seed: 7,
            edits: vec![
                Edit::Remove { at: 3, len: 200 },
                Edit::Duplicate {
                    from: 9,
                    len: 4,
                    at: 60_000,
                },
                Edit::Token { at: 0, which: 0 },
                Edit::Truncate { at: 2 },
            ],
        };
        // Seed 7 % 2 = 1: "abcdef"; remove from 3 → "abc"; duplicate "a"..: from 9%3=0 len 4 → "abc"
        // inserted at 60000%4=0 → "abcabc"; token '"' at 0 → "\"abcabc"; truncate at 2 → "\"a".
        assert_eq!(m.apply(&[b"xyz", b"abcdef"]), b"\"a");
        assert!(
            Mutation {
                seed: 0,
                edits: vec![Edit::Flip { at: 5, bit: 3 }]
            }
            .apply(&[])
            .is_empty()
        );
    }
}
