//! Built-in aggregates, computed incrementally from one accumulator.

use serde::{Deserialize, Serialize};

/// A built-in aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggKind {
    /// Number of values.
    Count,
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Population variance.
    Variance,
}

impl AggKind {
    /// Parses a name as used in pipeline specs.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "count" => AggKind::Count,
            "sum" => AggKind::Sum,
            "mean" | "avg" => AggKind::Mean,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "variance" | "var" => AggKind::Variance,
            _ => return None,
        })
    }
}

/// Running count, sum, min, max and variance (Welford) of one value stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    /// Values seen.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    mean: f64,
    m2: f64,
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
        }
    }
}

impl Agg {
    /// Adds one value.
    #[inline]
    pub fn add(&mut self, x: f64) {
        self.count += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        let d = x - self.mean;
        self.mean += d / self.count as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Merges another accumulator (Chan et al.), for session-window merges.
    pub fn merge(&mut self, o: &Agg) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *o;
            return;
        }
        let n = (self.count + o.count) as f64;
        let d = o.mean - self.mean;
        self.m2 += o.m2 + d * d * self.count as f64 * o.count as f64 / n;
        self.mean += d * o.count as f64 / n;
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// Appends the accumulator's exact state (48 bytes, little-endian) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_le_bytes());
        for x in [self.sum, self.min, self.max, self.mean, self.m2] {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }

    /// Reads an accumulator written by [`Agg::encode`] from the front of `bytes`, and
    /// returns it with the rest of the bytes.
    pub fn decode(bytes: &[u8]) -> Option<(Agg, &[u8])> {
        if bytes.len() < 48 {
            return None;
        }
        let (head, rest) = bytes.split_at(48);
        let word = |i: usize| -> [u8; 8] {
            let mut w = [0u8; 8];
            w.copy_from_slice(&head[i * 8..i * 8 + 8]);
            w
        };
        let f = |i: usize| f64::from_le_bytes(word(i));
        Some((
            Agg {
                count: u64::from_le_bytes(word(0)),
                sum: f(1),
                min: f(2),
                max: f(3),
                mean: f(4),
                m2: f(5),
            },
            rest,
        ))
    }

    /// The value of an aggregate.
    pub fn get(&self, kind: AggKind) -> f64 {
        match kind {
            AggKind::Count => self.count as f64,
            AggKind::Sum => self.sum,
            AggKind::Mean => self.sum / self.count as f64,
            AggKind::Min => self.min,
            AggKind::Max => self.max,
            AggKind::Variance => {
                if self.count == 0 {
                    f64::NAN
                } else {
                    self.m2 / self.count as f64
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_and_merge_agree_with_direct_formulas() {
        let xs = [1.0, 4.0, -2.0, 8.5, 3.0];
        let mut a = Agg::default();
        xs.iter().for_each(|&x| a.add(x));
        let mean = xs.iter().sum::<f64>() / 5.0;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 5.0;
        assert_eq!(a.get(AggKind::Count), 5.0);
        assert_eq!(a.get(AggKind::Sum), 14.5);
        assert_eq!(a.get(AggKind::Min), -2.0);
        assert_eq!(a.get(AggKind::Max), 8.5);
        assert!((a.get(AggKind::Mean) - mean).abs() < 1e-12);
        assert!((a.get(AggKind::Variance) - var).abs() < 1e-12);

        let (mut l, mut r) = (Agg::default(), Agg::default());
        xs[..2].iter().for_each(|&x| l.add(x));
        xs[2..].iter().for_each(|&x| r.add(x));
        l.merge(&r);
        assert!((l.get(AggKind::Variance) - var).abs() < 1e-12);
        assert_eq!(l.count, 5);
        assert_eq!(AggKind::parse("avg"), Some(AggKind::Mean));
        assert_eq!(AggKind::parse("median"), None);

        let mut bytes = Vec::new();
        l.encode(&mut bytes);
        bytes.push(7);
        let (back, rest) = Agg::decode(&bytes).expect("decodes");
        assert_eq!(rest, &[7]);
        assert_eq!(back.count, l.count);
        assert_eq!(
            back.get(AggKind::Variance).to_bits(),
            l.get(AggKind::Variance).to_bits()
        );
        assert_eq!(back.min, -2.0);
        assert!(Agg::decode(&bytes[..47]).is_none());
    }
}
