//! A linearizability checker for histories of a key-value store (put, get, delete, cas).
//!
//! Wing & Gong's search with Lowe's memoization (as in Porcupine): operations are linearized
//! one at a time in an order consistent with real time, backtracking on a dead end, and a
//! cache of (operations linearized, register state) prunes repeated work. Histories are split
//! per key (P-compositionality: a history is linearizable iff each key's sub-history is). An
//! operation whose outcome is unknown (a timeout, a lost connection) may have taken effect at
//! any point after its invocation, or not at all: it has no return time, and any output is
//! accepted for it. The search has a step budget; a key whose search exceeds it is reported
//! `Unknown`, never `Ok`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Set the key.
    Put(Vec<u8>),
    /// Read the key.
    Get,
    /// Remove the key.
    Delete,
    /// Set to `new` if the value is `expected` (`None`: absent).
    Cas {
        /// The value it must have.
        expected: Option<Vec<u8>>,
        /// The value to set.
        new: Vec<u8>,
    },
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A put completed.
    Put,
    /// The value read.
    Get(Option<Vec<u8>>),
    /// Whether the deleted key existed.
    Delete(bool),
    /// Whether the compare-and-swap swapped.
    Cas(bool),
    /// No answer: the operation may or may not have taken effect.
    Unknown,
}

/// One operation in a history. Times are in any monotonic unit (nanoseconds since the test
/// began, say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Which client (for reports).
    pub client: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The request.
    pub input: Input,
    /// The answer.
    pub output: Output,
    /// When the request was sent.
    pub call: u64,
    /// When the answer arrived; ignored for `Output::Unknown`.
    pub ret: u64,
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Ok,
    /// A key's history is not; with the operations around the point where every ordering
    /// failed.
    Violation {
        /// The key.
        key: Vec<u8>,
        /// A window of the key's operations, in call order, readable by a person.
        window: Vec<String>,
    },
    /// A key's search exceeded its budget: nothing is claimed.
    Unknown {
        /// The key.
        key: Vec<u8>,
    },
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ok => write!(f, "linearizable"),
            Verdict::Unknown { key } => {
                write!(f, "unknown: the search for key {:?} exceeded its budget", show(key))
            }
            Verdict::Violation { key, window } => {
                writeln!(
                    f,
                    "NOT linearizable: key {:?}; no order of these operations explains them:",
                    show(key)
                )?;
                for line in window {
                    writeln!(f, "  {line}")?;
                }
                Ok(())
            }
        }
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Steps of the search allowed per key by [`check`].
pub const STEPS_PER_KEY_MAX: u64 = 2_000_000;

/// Checks a history.
pub fn check(history: &[Operation]) -> Verdict {
    check_with_budget(history, STEPS_PER_KEY_MAX)
}

/// Checks a history with a search budget per key.
pub fn check_with_budget(history: &[Operation], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in history {
        // A read with an unknown outcome says nothing and changes nothing.
        if op.input == Input::Get && op.output == Output::Unknown {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut unknown = None;
    for (key, ops) in by_key {
        match check_key(&ops, budget) {
            KeyVerdict::Ok => {}
            KeyVerdict::Unknown => unknown = unknown.or(Some(key.to_vec())),
            KeyVerdict::Violation(window) => {
                return Verdict::Violation { key: key.to_vec(), window }
            }
        }
    }
    match unknown {
        Some(key) => Verdict::Unknown { key },
        None => Verdict::Ok,
    }
}

enum KeyVerdict {
    Ok,
    Unknown,
    Violation(Vec<String>),
}

/// The register's state: the value's id, or absent.
type State = Option<u32>;

/// Applies an operation to the state; `None` when its output is impossible in that state.
fn step(state: State, input: &InputIds, output: &Output) -> Option<State> {
    match (input, output) {
        (InputIds::Put(v), Output::Put | Output::Unknown) => Some(Some(*v)),
        // Reads are matched by value id in `check_key`.
        (InputIds::Get(_), _) => None,
        (InputIds::Delete, Output::Delete(existed)) => {
            (*existed == state.is_some()).then_some(None)
        }
        (InputIds::Delete, Output::Unknown) => Some(None),
        (InputIds::Cas { expected, new }, out) => {
            let swaps = state == *expected;
            match out {
                Output::Cas(swapped) if *swapped == swaps => {
                    Some(if swaps { Some(*new) } else { state })
                }
                Output::Unknown => Some(if swaps { Some(*new) } else { state }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// An input with values replaced by ids; a read carries its observed value's id.
enum InputIds {
    Put(u32),
    Get(Option<u32>),
    Delete,
    Cas { expected: Option<u32>, new: u32 },
}

struct Interner(HashMap<Vec<u8>, u32>);

impl Interner {
    fn id(&mut self, v: &[u8]) -> u32 {
        let next = self.0.len() as u32;
        *self.0.entry(v.to_vec()).or_insert(next)
    }
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

fn check_key(ops: &[&Operation], budget: u64) -> KeyVerdict {
    let mut interner = Interner(HashMap::new());
    // Values are interned; a read of a value never written gets an id no write has, so it
    // matches no state.
    let inputs: Vec<InputIds> = ops
        .iter()
        .map(|op| match &op.input {
            Input::Put(v) => InputIds::Put(interner.id(v)),
            Input::Get => InputIds::Get(match &op.output {
                Output::Get(Some(v)) => Some(interner.id(v)),
                _ => None,
            }),
            Input::Delete => InputIds::Delete,
            Input::Cas { expected, new } => InputIds::Cas {
                expected: expected.as_ref().map(|e| interner.id(e)),
                new: interner.id(new),
            },
        })
        .collect();
    let step_ids = |state: State, i: usize| -> Option<State> {
        match &inputs[i] {
            InputIds::Get(id) => (*id == state).then_some(state),
            input => step(state, input, &ops[i].output),
        }
    };

    // Events in time order: calls before returns at equal times (the permissive reading).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, true, i));
        let ret = if op.output == Output::Unknown { u64::MAX } else { op.ret };
        order.push((ret, false, i));
    }
    order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    let mut events: Vec<Event> = Vec::with_capacity(order.len() + 1);
    // Index 0 is a sentinel head.
    events.push(Event { op: usize::MAX, is_call: false, prev: NIL, next: 1 });
    let mut call_of = vec![0usize; ops.len()];
    let mut ret_of = vec![0usize; ops.len()];
    for (k, &(_, is_call, i)) in order.iter().enumerate() {
        let idx = k + 1;
        events.push(Event {
            op: i,
            is_call,
            prev: idx - 1,
            next: if k + 1 < order.len() { idx + 1 } else { NIL },
        });
        if is_call {
            call_of[i] = idx;
        } else {
            ret_of[i] = idx;
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut entry = events[0].next;
    let mut steps = 0u64;
    let mut best: Vec<u64> = linearized.clone();
    let mut best_count = 0usize;

    let lift = |events: &mut Vec<Event>, i: usize| {
        for idx in [call_of[i], ret_of[i]] {
            let (p, n) = (events[idx].prev, events[idx].next);
            events[p].next = n;
            if n != NIL {
                events[n].prev = p;
            }
        }
    };
    let unlift = |events: &mut Vec<Event>, i: usize| {
        for idx in [ret_of[i], call_of[i]] {
            let (p, n) = (events[idx].prev, events[idx].next);
            events[p].next = idx;
            if n != NIL {
                events[n].prev = idx;
            }
        }
    };

    while events[0].next != NIL {
        steps += 1;
        if steps > budget {
            return KeyVerdict::Unknown;
        }
        if entry == NIL {
            // Only unknown operations remain unlinearized past the end: they never happened.
            break;
        }
        let ev = events[entry];
        if ev.is_call {
            let i = ev.op;
            if let Some(next_state) = step_ids(state, i) {
                let mut next_lin = linearized.clone();
                next_lin[i / 64] |= 1 << (i % 64);
                if cache.insert((next_lin.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = next_lin;
                    lift(&mut events, i);
                    let count = linearized.iter().map(|w| w.count_ones() as usize).sum();
                    if count > best_count {
                        best_count = count;
                        best = linearized.clone();
                    }
                    entry = events[0].next;
                    continue;
                }
            }
            entry = ev.next;
        } else {
            let i = ev.op;
            if ops[i].output == Output::Unknown {
                // Its return is at infinity: everything left is unknown; done.
                break;
            }
            let Some((call_entry, prev_state)) = stack.pop() else {
                return KeyVerdict::Violation(window(ops, &best));
            };
            let j = events[call_entry].op;
            state = prev_state;
            linearized[j / 64] &= !(1 << (j % 64));
            unlift(&mut events, j);
            entry = events[call_entry].next;
        }
    }
    KeyVerdict::Ok
}

/// The operations around the first one no ordering could place: the last few placed in the
/// longest partial linearization, and those concurrent with or just after it.
fn window(ops: &[&Operation], best: &[u64]) -> Vec<String> {
    let placed = |i: usize| best[i / 64] & (1 << (i % 64)) != 0;
    let mut by_call: Vec<usize> = (0..ops.len()).collect();
    by_call.sort_by_key(|&i| (ops[i].call, i));
    let first_stuck =
        by_call.iter().position(|&i| !placed(i) && ops[i].output != Output::Unknown).unwrap_or(0);
    let stuck = ops[by_call[first_stuck]];
    let lo = first_stuck.saturating_sub(5);
    by_call
        .iter()
        .enumerate()
        .skip(lo)
        .filter(|&(pos, &i)| {
            pos < first_stuck || ops[i].call <= stuck.ret.max(stuck.call) || pos <= first_stuck + 3
        })
        .take(12)
        .map(|(_, &i)| describe(ops[i], placed(i)))
        .collect()
}

fn describe(op: &Operation, placed: bool) -> String {
    let input = match &op.input {
        Input::Put(v) => format!("put {:?}", show(v)),
        Input::Get => "get".to_string(),
        Input::Delete => "delete".to_string(),
        Input::Cas { expected, new } => {
            format!("cas {:?} -> {:?}", expected.as_deref().map(show), show(new))
        }
    };
    let output = match &op.output {
        Output::Put => "ok".to_string(),
        Output::Get(v) => format!("{:?}", v.as_deref().map(show)),
        Output::Delete(e) => format!("existed={e}"),
        Output::Cas(s) => format!("swapped={s}"),
        Output::Unknown => "unknown".to_string(),
    };
    let ret = if op.output == Output::Unknown {
        "?".to_string()
    } else {
        format!("{:.3}ms", op.ret as f64 / 1e6)
    };
    let mark = if placed { " " } else { "!" };
    format!(
        "{mark} [{:.3}ms .. {ret}] client {}: {input} => {output}",
        op.call as f64 / 1e6,
        op.client
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, input: Input, output: Output, call: u64, ret: u64) -> Operation {
        Operation { client, key: b"k".to_vec(), input, output, call, ret }
    }
    fn put(v: &str) -> Input {
        Input::Put(v.as_bytes().to_vec())
    }
    fn got(v: Option<&str>) -> Output {
        Output::Get(v.map(|v| v.as_bytes().to_vec()))
    }

    #[test]
    fn sequential_and_concurrent_histories_are_linearizable() {
        let h = vec![
            op(1, put("a"), Output::Put, 0, 10),
            op(2, Input::Get, got(Some("a")), 20, 30),
            // Concurrent put and get: the get may see either value.
            op(1, put("b"), Output::Put, 40, 60),
            op(2, Input::Get, got(Some("a")), 45, 50),
            op(3, Input::Get, got(Some("b")), 55, 70),
            op(1, Input::Delete, Output::Delete(true), 80, 90),
            op(2, Input::Get, got(None), 95, 99),
        ];
        assert_eq!(check(&h), Verdict::Ok);
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_take_effect() {
        // The timed-out put took effect (a later read sees it) ...
        let took = vec![
            op(1, put("a"), Output::Unknown, 0, 0),
            op(2, Input::Get, got(None), 5, 6),
            op(2, Input::Get, got(Some("a")), 100, 110),
        ];
        assert_eq!(check(&took), Verdict::Ok);
        // ... or it never did.
        let never =
            vec![op(1, put("a"), Output::Unknown, 0, 0), op(2, Input::Get, got(None), 100, 110)];
        assert_eq!(check(&never), Verdict::Ok);
        // An unknown cas that must have swapped to explain a read.
        let cas = vec![
            op(1, put("a"), Output::Put, 0, 1),
            op(
                2,
                Input::Cas { expected: Some(b"a".to_vec()), new: b"b".to_vec() },
                Output::Unknown,
                2,
                0,
            ),
            op(3, Input::Get, got(Some("b")), 50, 60),
        ];
        assert_eq!(check(&cas), Verdict::Ok);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_rejected() {
        let h = vec![
            op(1, put("a"), Output::Put, 0, 10),
            op(1, put("b"), Output::Put, 20, 30),
            op(2, Input::Get, got(Some("a")), 40, 50),
        ];
        let v = check(&h);
        assert!(matches!(v, Verdict::Violation { .. }), "{v}");
        assert!(v.to_string().contains("get"), "{v}");
    }

    #[test]
    fn a_lost_write_is_rejected() {
        let h = vec![op(1, put("a"), Output::Put, 0, 10), op(2, Input::Get, got(None), 20, 30)];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn a_read_of_a_value_never_written_is_rejected() {
        let h =
            vec![op(1, put("a"), Output::Put, 0, 10), op(2, Input::Get, got(Some("zzz")), 20, 30)];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn a_cas_that_succeeds_twice_is_rejected() {
        let cas = || Input::Cas { expected: Some(b"a".to_vec()), new: b"b".to_vec() };
        let h = vec![
            op(1, put("a"), Output::Put, 0, 10),
            op(2, cas(), Output::Cas(true), 20, 40),
            op(3, cas(), Output::Cas(true), 25, 45),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
        // One of the two failing is fine.
        let ok = vec![
            op(1, put("a"), Output::Put, 0, 10),
            op(2, cas(), Output::Cas(true), 20, 40),
            op(3, cas(), Output::Cas(false), 25, 45),
        ];
        assert_eq!(check(&ok), Verdict::Ok);
    }

    #[test]
    fn keys_are_checked_independently_and_the_bad_one_is_named() {
        let mut h = vec![
            Operation {
                client: 1,
                key: b"x".to_vec(),
                input: put("1"),
                output: Output::Put,
                call: 0,
                ret: 10,
            },
            Operation {
                client: 2,
                key: b"x".to_vec(),
                input: Input::Get,
                output: got(Some("1")),
                call: 20,
                ret: 30,
            },
        ];
        h.push(Operation {
            client: 1,
            key: b"y".to_vec(),
            input: put("1"),
            output: Output::Put,
            call: 0,
            ret: 10,
        });
        h.push(Operation {
            client: 2,
            key: b"y".to_vec(),
            input: Input::Get,
            output: got(None),
            call: 20,
            ret: 30,
        });
        match check(&h) {
            Verdict::Violation { key, .. } => assert_eq!(key, b"y"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_large_history_checks_in_time_and_a_tiny_budget_says_unknown() {
        // 10,000 operations over 100 keys from 10 clients, overlapping in time.
        let mut h = Vec::new();
        let mut values: HashMap<usize, Option<String>> = HashMap::new();
        let mut t = 0u64;
        for n in 0..10_000usize {
            let key = n % 100;
            let client = (n % 10) as u64;
            let current = values.entry(key).or_insert(None).clone();
            let (input, output) = if n % 3 == 0 {
                let v = format!("v{n}");
                values.insert(key, Some(v.clone()));
                (put(&v), Output::Put)
            } else {
                (Input::Get, Output::Get(current.map(String::into_bytes)))
            };
            h.push(Operation {
                client,
                key: key.to_string().into_bytes(),
                input,
                output,
                call: t,
                ret: t + 15,
            });
            t += 10;
        }
        let start = std::time::Instant::now();
        assert_eq!(check(&h), Verdict::Ok);
        assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
        assert!(matches!(check_with_budget(&h, 5), Verdict::Unknown { .. }));
    }
}
