//! Choosing the `k` lowest-scored weights of a group in O(n), with a deterministic
//! tie-break, without copying the weights.
//!
//! Every weight has a 32-bit order-preserving key (for magnitude pruning, the bits of
//! `|w|`). The `k`-th smallest key is found by a two-level radix selection: a histogram
//! of the keys' upper 16 bits finds the bucket holding it, a histogram of the lower 16
//! bits of the keys in that bucket finds the key itself. Each level is one parallel
//! pass over the weights with 2¹⁶ counters per thread; no key is stored.

use super::mask::{Masks, TensorMask};
use super::plan::Group;
use crate::layer::{Param, Params};
use rayon::prelude::*;
use std::collections::HashSet;

/// Where a ranking is cut: every weight whose key is below `threshold` is removed, and
/// so are the first `ties` weights (in walk order) whose key equals it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    threshold: u32,
    ties: usize,
}

/// The order-preserving key of a magnitude: the bits of `|w|` (for non-NaN floats,
/// larger magnitude ⇔ larger bit pattern).
pub(crate) fn magnitude_key(w: f32) -> u32 {
    w.abs().to_bits()
}

const BUCKETS: usize = 1 << 16;

/// Tensors shorter than this are counted on the calling thread.
const PARALLEL_LEN: usize = 1 << 18;

/// Counts, per bucket, the weights of the group's tensors for which `bucket` gives one.
fn histogram<L, K, B>(model: &L, members: &HashSet<&str>, key: &K, bucket: B) -> Vec<u64>
where
    L: Params + ?Sized,
    K: Fn(usize, usize, f32) -> u32 + Sync,
    B: Fn(u32) -> Option<usize> + Sync,
{
    let count = |t: usize, offset: usize, data: &[f32], h: &mut [u64]| {
        for (j, &w) in data.iter().enumerate() {
            if let Some(b) = bucket(key(t, offset + j, w)) {
                h[b] += 1;
            }
        }
    };
    let mut total = vec![0u64; BUCKETS];
    walk_prunable(model, |t, p| {
        if !members.contains(p.name) {
            return;
        }
        if p.data.len() < PARALLEL_LEN {
            count(t, 0, p.data, &mut total);
            return;
        }
        let part = p.data.len().div_ceil(rayon::current_num_threads());
        let partial: Vec<Vec<u64>> = p
            .data
            .par_chunks(part)
            .enumerate()
            .map(|(c, chunk)| {
                let mut h = vec![0u64; BUCKETS];
                count(t, c * part, chunk, &mut h);
                h
            })
            .collect();
        for h in partial {
            total.iter_mut().zip(h).for_each(|(a, b)| *a += b);
        }
    });
    total
}

/// The bucket holding the `k`-th smallest (1-based) and how many lie in earlier buckets.
fn locate(histogram: &[u64], k: u64) -> (usize, u64) {
    let mut below = 0;
    for (b, &n) in histogram.iter().enumerate() {
        if below + n >= k {
            return (b, below);
        }
        below += n;
    }
    (histogram.len() - 1, below)
}

/// The cut that removes the group's `k` smallest keys, or `None` when `k` is 0.
fn find_cut<L, K>(model: &L, members: &HashSet<&str>, key: &K, k: usize) -> Option<Cut>
where
    L: Params + ?Sized,
    K: Fn(usize, usize, f32) -> u32 + Sync,
{
    if k == 0 {
        return None;
    }
    let high = histogram(model, members, key, |v| Some((v >> 16) as usize));
    let (hb, below_high) = locate(&high, k as u64);
    let low = histogram(model, members, key, |v| {
        ((v >> 16) as usize == hb).then_some((v & 0xffff) as usize)
    });
    let (lb, below_low) = locate(&low, k as u64 - below_high);
    Some(Cut {
        threshold: ((hb as u32) << 16) | lb as u32,
        ties: (k as u64 - below_high - below_low) as usize,
    })
}

/// Builds the masks of every group: finds where each group's ranking is cut, then
/// marks the removed weights tensor by tensor, in parallel within a tensor. Weights
/// whose key equals the threshold are removed in walk order until the cut's tie quota
/// is used up. `key(t, i, w)` scores weight `i` (value `w`) of the `t`-th prunable
/// tensor of the model.
pub(crate) fn rank<L, K>(model: &L, groups: &[Group], key: K) -> Masks
where
    L: Params + ?Sized,
    K: Fn(usize, usize, f32) -> u32 + Sync,
{
    let mut masks = Masks::new();
    for group in groups {
        let members: HashSet<&str> = group.tensors.iter().map(String::as_str).collect();
        let mut cut = find_cut(model, &members, &key, group.remove);
        walk_prunable(model, |t, p| {
            if !members.contains(p.name) {
                return;
            }
            let mut mask = TensorMask::keep_all(p.shape);
            if let Some(cut) = cut.as_mut() {
                mark(t, p.data, &key, cut, &mut mask);
            }
            masks.insert(p.name, mask);
        });
    }
    masks
}

/// Marks in `mask` the weights of tensor `t` that `cut` removes, using up its ties.
fn mark<K>(t: usize, data: &[f32], key: &K, cut: &mut Cut, mask: &mut TensorMask)
where
    K: Fn(usize, usize, f32) -> u32 + Sync,
{
    let threshold = cut.threshold;
    let equal: usize = data
        .par_iter()
        .enumerate()
        .with_min_len(1 << 14)
        .filter(|&(i, &w)| key(t, i, w) == threshold)
        .count();
    // All of this tensor's ties are removed, or none, or (rarely) the first few.
    let take_all_ties = equal <= cut.ties;
    mask.words_mut()
        .par_iter_mut()
        .zip(data.par_chunks(64))
        .enumerate()
        .with_min_len(1 << 8)
        .for_each(|(c, (word, chunk))| {
            for (j, &w) in chunk.iter().enumerate() {
                let k = key(t, c * 64 + j, w);
                if k < threshold || (k == threshold && take_all_ties) {
                    *word |= 1 << j;
                }
            }
        });
    if take_all_ties {
        cut.ties -= equal;
        return;
    }
    for (i, &w) in data.iter().enumerate() {
        if cut.ties == 0 {
            break;
        }
        if key(t, i, w) == threshold {
            mask.prune(i);
            cut.ties -= 1;
        }
    }
}

/// Calls `f(t, param)` for the `t`-th prunable tensor, in walk order.
fn walk_prunable<L: Params + ?Sized>(model: &L, mut f: impl FnMut(usize, Param<'_>)) {
    let mut t = 0;
    model.visit_params(&mut |p| {
        if p.role.is_prunable() {
            f(t, p);
            t += 1;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Linear;

    /// The masks of removing the `k` smallest of `values` from one tensor.
    fn mark(values: &[f32], k: usize) -> Vec<bool> {
        let mut layer = Linear::new(1, values.len(), false);
        layer.visit_params_mut(&mut |p| p.data.copy_from_slice(values));
        let group = Group {
            tensors: vec!["weight".into()],
            remove: k,
        };
        let masks = rank(&layer, &[group], |_, _, w| magnitude_key(w));
        let mask = masks.get("weight").unwrap();
        (0..values.len()).map(|i| mask.is_pruned(i)).collect()
    }

    #[test]
    fn ties_go_to_the_earlier_position() {
        let values = [5.0, 1.0, -3.0, -1.0, 3.0, 3.0, 9.0];
        assert_eq!(
            mark(&values, 4),
            [false, true, true, true, true, false, false]
        );
        assert_eq!(
            mark(&values, 3),
            [false, true, true, true, false, false, false]
        );
        assert_eq!(mark(&values, 0), [false; 7]);
        assert_eq!(mark(&values, 7), [true; 7]);
    }

    #[test]
    fn large_tensors_take_the_parallel_path() {
        // Values repeat every 1000, so the threshold value has hundreds of ties.
        let n = PARALLEL_LEN + 12_345;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 - 500.0).collect();
        for k in [1, 1000, n / 2, n - 1] {
            let got = mark(&values, k);
            assert_eq!(got.iter().filter(|&&p| p).count(), k);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (values[i].abs().to_bits(), i));
            let mut want = vec![false; n];
            order[..k].iter().for_each(|&i| want[i] = true);
            assert!(got == want, "k = {k}");
        }
    }

    #[test]
    fn magnitudes_order_like_absolute_values() {
        let mut v = [-3.0f32, 0.5, -0.0, 2.0, -0.25, 1e-30];
        v.sort_by_key(|&w| magnitude_key(w));
        assert_eq!(v, [-0.0, 1e-30, -0.25, 0.5, 2.0, -3.0]);
    }
}
