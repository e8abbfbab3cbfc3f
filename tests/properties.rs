//! Properties that hold for any weights and data: the exact removal count,
//! idempotence, nesting, merge associativity, and REFLOW never touching a weight.

use ndarray::Array4;
use proptest::prelude::*;
use reflow::layer::{ActivationView, ParamRole, Params};
use reflow::nn::{Activation, BatchNorm2d, Conv2d, Conv2dConfig, Sequential};
use reflow::prune::{removal_count, MagnitudePruner, Pruner, RandomPruner, Scope};
use reflow::rescale::{Reflow, Rescaler};
use reflow::stats::{ActivationStats, ChannelMoments};

/// conv(2→3, 3x3) → BN → ReLU → conv(3→4, 1x1) → BN: 54 + 12 prunable weights.
fn net(weights: &[f32]) -> Sequential {
    let mut net = Sequential::new()
        .push(
            "conv1",
            Conv2d::new(Conv2dConfig::new(2, 3, 3).padding(1)).unwrap(),
        )
        .push("bn1", BatchNorm2d::new(3, 1e-5))
        .push("relu", Activation::Relu)
        .push("conv2", Conv2d::new(Conv2dConfig::new(3, 4, 1)).unwrap())
        .push("bn2", BatchNorm2d::new(4, 1e-5));
    let mut it = weights.iter().cycle();
    net.visit_params_mut(&mut |p| {
        if p.role == ParamRole::Weight {
            p.data.iter_mut().for_each(|v| *v = *it.next().unwrap());
        }
    });
    net
}

/// Weights from a small set of values, so ties in |w| are common.
fn tied_weights() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec((-4i8..=4).prop_map(|v| v as f32 * 0.25), 66)
}

fn scopes() -> impl Strategy<Value = Scope> {
    prop_oneof![Just(Scope::Global), Just(Scope::Layer)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn exactly_round_s_n_weights_are_removed(w in tied_weights(), s in 0.0f64..0.999, scope in scopes()) {
        let model = net(&w);
        let masks = MagnitudePruner::new(s).scope(scope).masks(&model).unwrap();
        let want = match scope {
            Scope::Global => removal_count(s, 66),
            Scope::Layer => removal_count(s, 54) + removal_count(s, 12),
        };
        prop_assert_eq!(masks.pruned_count(), want);
        let random = RandomPruner::new(s, 3).scope(scope).masks(&model).unwrap();
        prop_assert_eq!(random.pruned_count(), want);
    }

    #[test]
    fn no_kept_weight_is_smaller_than_a_pruned_one(w in tied_weights(), s in 0.0f64..0.999) {
        let model = net(&w);
        let masks = MagnitudePruner::new(s).masks(&model).unwrap();
        let (mut max_pruned, mut min_kept) = (0f32, f32::INFINITY);
        model.visit_params(&mut |p| if let Some(m) = masks.get(p.name) {
            for (i, v) in p.data.iter().enumerate() {
                if m.is_pruned(i) { max_pruned = max_pruned.max(v.abs()) } else { min_kept = min_kept.min(v.abs()) }
            }
        });
        prop_assert!(max_pruned <= min_kept);
    }

    #[test]
    fn applying_twice_equals_applying_once(w in tied_weights(), s in 0.0f64..0.999, scope in scopes()) {
        let mut once = net(&w);
        let masks = MagnitudePruner::new(s).scope(scope).masks(&once).unwrap();
        masks.apply(&mut once).unwrap();
        let mut twice = net(&w);
        masks.apply(&mut twice).unwrap();
        masks.apply(&mut twice).unwrap();
        prop_assert_eq!(reflow::StateDict::from_layer(&once), reflow::StateDict::from_layer(&twice));
    }

    #[test]
    fn higher_sparsity_contains_lower(w in tied_weights(), a in 0.0f64..0.999, b in 0.0f64..0.999, scope in scopes()) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let model = net(&w);
        let low = MagnitudePruner::new(lo).scope(scope).masks(&model).unwrap();
        let high = MagnitudePruner::new(hi).scope(scope).masks(&model).unwrap();
        prop_assert!(low.is_subset_of(&high));
        let low = RandomPruner::new(lo, 9).scope(scope).masks(&model).unwrap();
        let high = RandomPruner::new(hi, 9).scope(scope).masks(&model).unwrap();
        prop_assert!(low.is_subset_of(&high));
    }

    #[test]
    fn merging_shards_equals_one_pass(
        data in prop::collection::vec(-1e3f32..1e3, 3 * 2 * 5),
        cut1 in 0usize..=3, cut2 in 0usize..=3,
    ) {
        // 3 samples, 2 channels, 5 values; split the samples into three shards.
        let (c1, c2) = (cut1.min(cut2), cut1.max(cut2));
        let shard = |from: usize, to: usize| {
            let mut m = ChannelMoments::new(2);
            m.update(ActivationView::new(&data[from * 10..to * 10], to - from, 2, 5).unwrap()).unwrap();
            m
        };
        let (a, b, c) = (shard(0, c1), shard(c1, c2), shard(c2, 3));
        let whole = shard(0, 3);
        let mut left = a.clone();
        left.merge(&b).unwrap();
        left.merge(&c).unwrap();
        let mut right = b.clone();
        right.merge(&c).unwrap();
        let mut right_all = a.clone();
        right_all.merge(&right).unwrap();
        for m in [&left, &right_all] {
            prop_assert_eq!(m.count(), whole.count());
            for ch in 0..2 {
                let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs().max(1.0);
                prop_assert!(close(m.mean()[ch], whole.mean()[ch]));
                prop_assert!(close(m.variance()[ch], whole.variance()[ch]));
            }
        }
    }

    #[test]
    fn reflow_never_touches_a_weight(w in tied_weights(), seed in 0u32..1000, mode in 0usize..3) {
        let mut model = net(&w);
        let batches: Vec<Array4<f32>> = (0..3).map(|b| {
            Array4::from_shape_fn((4, 2, 5, 5), |(n, c, h, x)| {
                let k = seed as usize + b * 7 + n * 3 + c * 11 + h * 5 + x;
                ((k * 2654435761) % 1000) as f32 / 250.0 - 1.0
            })
        }).collect();
        let trainable = |m: &Sequential| {
            let mut v = Vec::new();
            m.visit_params(&mut |p| if p.role.is_trainable() {
                v.push((p.name.to_string(), p.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>()));
            });
            v
        };
        let before = trainable(&model);
        let reflow = [Reflow::cumulative(), Reflow::ema(0.3), Reflow::exact()][mode];
        reflow.rescale(&mut model, &batches).unwrap();
        prop_assert_eq!(trainable(&model), before);
    }
}
