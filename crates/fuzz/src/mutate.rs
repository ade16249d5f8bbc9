//! Mutations of one input: bit and byte flips, inserted, deleted and
//! duplicated ranges, splices with another corpus entry, dictionary tokens
//! (inserted, overwritten, repeated for deep nesting) and edited numbers.

use crate::rng::Rng;

/// Bytes that tend to sit on parsers' edges.
const INTERESTING: &[u8] = b"\0\x01\x7f\x80\xff\t\n\r \"'\\%(),.:;=&*{}[]-+!0123456789";

/// Numbers that tend to overflow or underflow.
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"-0",
    b"2147483648",
    b"-2147483649",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"99999999999999999999999999999999999999",
    b"1e999",
    b"NaN",
    b"4294967295",
];

/// `input` mutated in place by one to eight stacked mutations, then cut to
/// `max_len`; `other` is a second corpus entry for splices.
pub fn mutate(
    rng: &mut Rng,
    input: &mut Vec<u8>,
    other: &[u8],
    dictionary: &[&[u8]],
    max_len: usize,
) {
    let rounds = 1 << rng.below(4);
    for _ in 0..rounds {
        one(rng, input, other, dictionary);
    }
    input.truncate(max_len);
}

fn one(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8], dictionary: &[&[u8]]) {
    let len = input.len();
    match rng.below(14) {
        // A bit flip.
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        // A random or an interesting byte.
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = if rng.one_in(2) {
                rng.next_u64() as u8
            } else {
                INTERESTING[rng.below(INTERESTING.len())]
            };
        }
        // Random bytes inserted.
        2 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.one_in(2) {
                        INTERESTING[rng.below(INTERESTING.len())]
                    } else {
                        rng.next_u64() as u8
                    }
                })
                .collect();
            input.splice(at..at, bytes);
        }
        // A range deleted.
        3 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(16));
            input.drain(at..at + n);
        }
        // A range duplicated elsewhere.
        4 if len > 0 => {
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(32));
            let piece = input[from..from + n].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, piece);
        }
        // Spliced with another entry: our head, its tail.
        5 if !other.is_empty() => {
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        // A range of another entry inserted.
        6 if !other.is_empty() => {
            let from = rng.below(other.len());
            let n = 1 + rng.below((other.len() - from).min(32));
            let at = rng.below(len + 1);
            input.splice(at..at, other[from..from + n].iter().copied());
        }
        // A dictionary token inserted (most likely).
        7..=9 if !dictionary.is_empty() => {
            let token = dictionary[rng.below(dictionary.len())];
            let at = rng.below(len + 1);
            input.splice(at..at, token.iter().copied());
        }
        // A dictionary token overwriting bytes.
        10 if !dictionary.is_empty() && len > 0 => {
            let token = dictionary[rng.below(dictionary.len())];
            let at = rng.below(len);
            let end = (at + token.len()).min(len);
            input.splice(at..end, token.iter().copied());
        }
        // A token repeated many times: deep nesting, long lists.
        11 if !dictionary.is_empty() => {
            let token = dictionary[rng.below(dictionary.len())];
            let most = if rng.one_in(4) { 2000 } else { 64 };
            let times = 1 + rng.below(most);
            let at = rng.below(len + 1);
            let run: Vec<u8> = token
                .iter()
                .copied()
                .cycle()
                .take(token.len() * times)
                .collect();
            input.splice(at..at, run);
        }
        // A number replaced by an edge number.
        12 => {
            let number = NUMBERS[rng.below(NUMBERS.len())];
            match input.iter().position(|b| b.is_ascii_digit()) {
                Some(start) => {
                    let end = input[start..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(len, |n| start + n);
                    input.splice(start..end, number.iter().copied());
                }
                None => {
                    let at = rng.below(len + 1);
                    input.splice(at..at, number.iter().copied());
                }
            }
        }
        // Truncated.
        13 if len > 0 => input.truncate(rng.below(len)),
        // The chosen mutation did not apply (e.g. an empty input): grow.
        _ => input.push(INTERESTING[rng.below(INTERESTING.len())]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_under_the_cap_and_change_the_input() {
        let mut rng = Rng::new(1);
        let mut changed = 0;
        for _ in 0..2000 {
            let mut input = b"select=a,b&c=eq.1".to_vec();
            mutate(&mut rng, &mut input, b"or=(a.eq.1)", &[b"not."], 64);
            assert!(input.len() <= 64);
            changed += usize::from(input != b"select=a,b&c=eq.1");
        }
        assert!(changed > 1900, "{changed}");
    }
}
