//! A token bucket in fixed point: `capacity` tokens, refilled at `rate` tokens per `period`,
//! stored as 16 bytes (micro-tokens, last refill in ns) so that every VM can share it.

/// Micro-tokens per token.
pub const SCALE: u64 = 1_000_000;

/// How a bucket fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per period.
    pub tokens: u64,
    /// The period, ns.
    pub period_ns: u64,
    /// Most tokens the bucket holds.
    pub capacity: u64,
}

/// A bucket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Micro-tokens in the bucket.
    pub micros: u64,
    /// When it was last refilled, ns since the epoch.
    pub at_ns: u64,
}

/// What taking a token gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// A token was taken.
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Seconds until the bucket is full again (rounded up).
    pub reset_s: u64,
    /// Seconds until the next token (rounded up; 0 if one is there).
    pub retry_after_s: u64,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(rate: &Rate, now: u64) -> Bucket {
        Bucket {
            micros: rate.capacity.saturating_mul(SCALE),
            at_ns: now,
        }
    }

    /// The 16 bytes stored in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.micros.to_le_bytes());
        v.extend_from_slice(&self.at_ns.to_le_bytes());
        v
    }

    /// A bucket from its bytes.
    pub fn decode(b: &[u8]) -> Option<Bucket> {
        if b.len() != 16 {
            return None;
        }
        Some(Bucket {
            micros: u64::from_le_bytes(b[..8].try_into().ok()?),
            at_ns: u64::from_le_bytes(b[8..].try_into().ok()?),
        })
    }

    /// The bucket refilled up to `now` (a clock that went back refills nothing).
    pub fn refilled(&self, rate: &Rate, now: u64) -> Bucket {
        let elapsed = now.saturating_sub(self.at_ns) as u128;
        let add = elapsed * u128::from(rate.tokens) * u128::from(SCALE)
            / u128::from(rate.period_ns.max(1));
        let cap = u128::from(rate.capacity) * u128::from(SCALE);
        let micros = (u128::from(self.micros) + add).min(cap) as u64;
        Bucket {
            micros,
            at_ns: now.max(self.at_ns),
        }
    }

    /// Refills up to `now` and takes a token if there is one. Returns the new state (to
    /// store if a token was taken) and the decision.
    pub fn take(&self, rate: &Rate, now: u64) -> (Bucket, Decision) {
        let mut b = self.refilled(rate, now);
        let allowed = b.micros >= SCALE;
        if allowed {
            b.micros -= SCALE;
        }
        let per_micro_ns = |micros: u64| -> u64 {
            // ns for `micros` micro-tokens to flow in, rounded up.
            let num = u128::from(micros) * u128::from(rate.period_ns);
            let den = u128::from(rate.tokens.max(1)) * u128::from(SCALE);
            num.div_ceil(den) as u64
        };
        let to_s = |ns: u64| ns.div_ceil(1_000_000_000);
        let full = rate.capacity.saturating_mul(SCALE);
        let retry = if b.micros >= SCALE {
            0
        } else {
            to_s(per_micro_ns(SCALE - b.micros))
        };
        (
            b,
            Decision {
                allowed,
                remaining: b.micros / SCALE,
                reset_s: to_s(per_micro_ns(full.saturating_sub(b.micros))),
                retry_after_s: retry.max(u64::from(!allowed)),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn rate(tokens: u64, period_s: u64, capacity: u64) -> Rate {
        Rate {
            tokens,
            period_ns: period_s * S,
            capacity,
        }
    }

    #[test]
    fn takes_exactly_the_capacity_then_refuses() {
        let r = rate(3, 60, 3);
        let mut b = Bucket::full(&r, 0);
        for left in [2, 1, 0] {
            let (nb, d) = b.take(&r, 0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            b = nb;
        }
        let (_, d) = b.take(&r, 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_s, 20, "one token every 20 s");
        assert_eq!(d.reset_s, 60);
    }

    #[test]
    fn refills_over_time_up_to_the_capacity() {
        let r = rate(10, 10, 5);
        let b = Bucket {
            micros: 0,
            at_ns: 0,
        };
        assert_eq!(b.refilled(&r, S / 2).micros, SCALE / 2);
        assert_eq!(b.refilled(&r, 3 * S).micros, 3 * SCALE);
        assert_eq!(b.refilled(&r, 100 * S).micros, 5 * SCALE, "capped");
        let back = Bucket {
            micros: SCALE,
            at_ns: 10 * S,
        };
        assert_eq!(
            back.refilled(&r, 5 * S),
            back,
            "a clock going back adds nothing"
        );
    }

    #[test]
    fn bytes_round_trip() {
        let b = Bucket {
            micros: 123,
            at_ns: 456,
        };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(Bucket::decode(b"short"), None);
    }
}
