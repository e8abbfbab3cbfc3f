//! Choosing the `k` lowest-scored weights of a group in O(n), with a deterministic
//! tie-break.

use super::mask::{Masks, TensorMask};
use super::plan::Group;
use crate::layer::{Layer, Param};
use std::collections::HashSet;

/// Where a ranking is cut: every weight whose key is below `threshold` is removed, and
/// so are the first `ties` weights (in walk order) whose key equals it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    threshold: u32,
    ties: usize,
}

impl Cut {
    /// The cut that removes the `k` smallest of `keys` (ties broken by position,
    /// earlier first), or `None` when `k` is 0. Found by selection
    /// (`select_nth_unstable`, O(n) on average) in place: `keys` is the only buffer.
    pub(crate) fn smallest(mut keys: Vec<u32>, k: usize) -> Option<Cut> {
        if k == 0 || keys.is_empty() {
            return None;
        }
        let k = k.min(keys.len());
        let (below, &mut threshold, _) = keys.select_nth_unstable(k - 1);
        let strictly_below = below.iter().filter(|&&v| v < threshold).count();
        Some(Cut {
            threshold,
            ties: k - strictly_below,
        })
    }

    /// Whether the next weight, with `key`, is removed. Call in the same order the
    /// keys were collected.
    pub(crate) fn take(&mut self, key: u32) -> bool {
        if key < self.threshold {
            true
        } else if key == self.threshold && self.ties > 0 {
            self.ties -= 1;
            true
        } else {
            false
        }
    }
}

/// The order-preserving key of a magnitude: the bits of `|w|` (for non-NaN floats,
/// larger magnitude ⇔ larger bit pattern).
pub(crate) fn magnitude_key(w: f32) -> u32 {
    w.abs().to_bits()
}

/// Builds the masks of every group: collects each group's keys in walk order, cuts
/// the ranking, then walks again to mark the removed weights. `key(t, i, w)` scores
/// weight `i` (value `w`) of the `t`-th prunable tensor of the model.
pub(crate) fn rank<L: Layer + ?Sized>(
    model: &L,
    groups: &[Group],
    key: impl Fn(usize, usize, f32) -> u32,
) -> Masks {
    let mut masks = Masks::new();
    for group in groups {
        let members: HashSet<&str> = group.tensors.iter().map(String::as_str).collect();
        let mut keys = Vec::new();
        walk_prunable(model, |t, p| {
            if members.contains(p.name) {
                keys.extend(p.data.iter().enumerate().map(|(i, &w)| key(t, i, w)));
            }
        });
        // One cut for the whole group, so ties are taken in group order across tensors.
        let mut cut = Cut::smallest(keys, group.remove);
        walk_prunable(model, |t, p| {
            if !members.contains(p.name) {
                return;
            }
            let mut mask = TensorMask::keep_all(p.shape);
            if let Some(cut) = cut.as_mut() {
                for (i, &w) in p.data.iter().enumerate() {
                    if cut.take(key(t, i, w)) {
                        mask.prune(i);
                    }
                }
            }
            masks.insert(p.name, mask);
        });
    }
    masks
}

/// Calls `f(t, param)` for the `t`-th prunable tensor, in walk order.
fn walk_prunable<L: Layer + ?Sized>(model: &L, mut f: impl FnMut(usize, Param<'_>)) {
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

    fn mark(keys: &[u32], k: usize) -> Vec<bool> {
        match Cut::smallest(keys.to_vec(), k) {
            None => vec![false; keys.len()],
            Some(mut cut) => keys.iter().map(|&key| cut.take(key)).collect(),
        }
    }

    #[test]
    fn ties_go_to_the_earlier_position() {
        let keys = [5, 1, 3, 1, 3, 3, 9];
        assert_eq!(
            mark(&keys, 4),
            [false, true, true, true, true, false, false]
        );
        assert_eq!(mark(&keys, 0), [false; 7]);
        assert_eq!(mark(&keys, 7), [true; 7]);
    }

    #[test]
    fn magnitudes_order_like_absolute_values() {
        let mut v = [-3.0f32, 0.5, -0.0, 2.0, -0.25, 1e-30];
        v.sort_by_key(|&w| magnitude_key(w));
        assert_eq!(v, [-0.0, 1e-30, -0.25, 0.5, 2.0, -3.0]);
    }
}
