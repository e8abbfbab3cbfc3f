//! The convolution layer against its definition, at every kernel level and path.

use super::*;
use crate::layer::{Layer, Params, Probe};
use crate::nn::engine::path::{self, ConvPath};
use crate::nn::kernels::{every_kernels, Kernels};
use crate::stats::channel_moments;
use ndarray::Array4;

/// Every instruction set this machine can run the paths on: faer's products
/// alone, then the image kernels on each instruction set.
fn every_isa() -> Vec<Isa> {
    std::iter::once(Isa::Portable)
        .chain(every_kernels().into_iter().map(Isa::Kernels))
        .collect()
}

impl Conv2d {
    /// The eval pass on `isa`.
    fn forward_on(&self, isa: Isa, x: &Tensor4) -> Tensor4 {
        let epilogue = Epilogue::default();
        self.convolve(x, None, &mut Probe::none(), &epilogue, None, isa)
            .unwrap()
    }
}

fn ramp(shape: (usize, usize, usize, usize)) -> Tensor4 {
    let mut i = 0.0f32;
    Array4::from_shape_simple_fn(shape, || {
        i += 1.0;
        (i * 0.37).sin()
    })
}

/// The definition of convolution, written out with no cleverness.
fn direct(conv: &Conv2d, x: &Tensor4) -> Tensor4 {
    let c = conv.config;
    let (n, _, h, w) = x.dim();
    let (ho, wo) = conv.output_size(h, w).unwrap();
    let (cg, og) = (c.in_channels / c.groups, c.out_channels / c.groups);
    let wt = ndarray::ArrayView4::from_shape(c.weight_shape(), conv.weight()).unwrap();
    Array4::from_shape_fn((n, c.out_channels, ho, wo), |(b, o, i, j)| {
        let g = o / og;
        let mut acc = conv.bias().map_or(0.0, |bias| bias[o] as f64);
        for ci in 0..cg {
            for ki in 0..c.kernel[0] {
                for kj in 0..c.kernel[1] {
                    let ih =
                        (i * c.stride[0] + ki * c.dilation[0]) as isize - c.padding[0] as isize;
                    let iw =
                        (j * c.stride[1] + kj * c.dilation[1]) as isize - c.padding[1] as isize;
                    if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                        acc += wt[[o, ci, ki, kj]] as f64
                            * x[[b, g * cg + ci, ih as usize, iw as usize]] as f64;
                    }
                }
            }
        }
        acc as f32
    })
}

/// A convolution with deterministic, non-trivial weights.
fn filled(cfg: Conv2dConfig) -> Conv2d {
    let mut conv = Conv2d::new(cfg).unwrap();
    let mut i = 0.0f32;
    conv.visit_params_mut(&mut |p| {
        p.data.iter_mut().for_each(|v| {
            i += 1.0;
            *v = (i * 0.23).sin()
        })
    });
    conv
}

/// Checks that the image kernels take each case (`path` of the kernels), then
/// compares its convolution (of a 2-image ramp) with the definition on every
/// instruction set.
fn check_path(cases: &[(Conv2dConfig, (usize, usize))], path: fn(Kernels) -> ConvPath) {
    for &(cfg, (h, w)) in cases {
        for kernels in every_kernels() {
            let taken = path::image_kernel(&cfg, Isa::Kernels(kernels));
            assert_eq!(taken, Some(path(kernels)), "{cfg:?}");
        }
        check(&filled(cfg), &ramp((2, cfg.in_channels, h, w)));
    }
}

/// Compares the convolution of `x` on every instruction set with the definition,
/// and the layer's own pass with them; returns the output.
fn check(conv: &Conv2d, x: &Tensor4) -> Tensor4 {
    let want = direct(conv, x);
    for isa in every_isa() {
        let got = conv.forward_on(isa, x);
        let err = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
        assert!(
            err < 1e-4,
            "{:?} on {isa:?}: max error {err}",
            conv.config()
        );
    }
    let got = conv.forward(x).unwrap();
    assert_eq!(
        got,
        conv.forward_on(Isa::of(crate::exec::Exec::defaults()), x)
    );
    got
}

#[test]
fn im2col_gemm_equals_the_definition() {
    let configs = [
        Conv2dConfig::new(4, 6, 3).padding(1),
        Conv2dConfig::new(4, 6, 3).stride(2).bias(true),
        Conv2dConfig::new(4, 8, 3).dilation(2).padding(2).groups(2),
        Conv2dConfig::new(4, 4, 3).groups(4).padding(1).stride(2),
        Conv2dConfig::new(4, 6, 1),
        Conv2dConfig::new(4, 6, 1).stride(2),
    ];
    for cfg in configs {
        let conv = filled(cfg);
        let x = ramp((3, 4, 7, 6));
        let got = check(&conv, &x);
        // An image's output does not depend on the batch around it, up to the
        // rounding of faer's products, whose kernels depend on the product's width
        // on some processors (bit for bit on x86-64, a few units in the last place
        // with NEON).
        let single = conv.forward(&first_image(&x)).unwrap();
        let err = (&single - &first_image(&got))
            .mapv(f32::abs)
            .fold(0.0f32, |a, &b| a.max(b));
        assert!(err <= 1e-6, "{cfg:?}: batch independence, {err}");
    }
}

#[test]
fn depthwise_planes_equal_the_definition() {
    let configs = [
        Conv2dConfig::new(8, 8, 3).padding(1).groups(8),
        Conv2dConfig::new(8, 8, 3)
            .padding(1)
            .stride(2)
            .groups(8)
            .bias(true),
        Conv2dConfig::new(6, 6, 5).padding(2).groups(6),
        Conv2dConfig::new(6, 6, 5)
            .padding(2)
            .stride(2)
            .groups(6)
            .bias(true),
        Conv2dConfig::new(4, 4, 3).dilation(2).padding(2).groups(4),
        Conv2dConfig::new(4, 4, 3).stride(3).groups(4),
    ];
    for cfg in configs {
        assert_eq!(
            path::choose(
                &cfg,
                Shapes {
                    h: 9,
                    w: 9,
                    ho: 9,
                    wo: 9
                },
                1,
                Isa::Portable
            ),
            ConvPath::Depthwise
        );
        for (n, h, w) in [(3, 11, 7), (1, 5, 16)] {
            let conv = filled(cfg);
            check(&conv, &ramp((n, cfg.in_channels, h, w)));
        }
    }
}

#[test]
fn shifted_products_equal_the_definition() {
    let configs = [
        Conv2dConfig::new(3, 5, 3).padding(1),
        Conv2dConfig::new(4, 6, 3)
            .padding(2)
            .dilation(2)
            .groups(2)
            .bias(true),
        Conv2dConfig::new(2, 3, 5).padding(1),
        Conv2dConfig {
            kernel: [3, 1],
            padding: [1, 0],
            ..Conv2dConfig::new(2, 2, 1)
        },
    ];
    for cfg in configs {
        let conv = filled(cfg);
        let (ho, wo) = conv.output_size(26, 25).unwrap();
        let sh = Shapes {
            h: 26,
            w: 25,
            ho,
            wo,
        };
        let taken = path::choose(&cfg, sh, 1, Isa::Portable);
        assert_eq!(taken, ConvPath::Shifted, "{cfg:?}");
        check(&conv, &ramp((3, cfg.in_channels, 26, 25)));
    }
}

#[test]
fn direct_kernel_equals_the_definition() {
    // Output widths that exercise every block shape and the leftovers.
    let cases = [
        (Conv2dConfig::new(3, 16, 3).padding(1), (28, 28)),
        (Conv2dConfig::new(8, 32, 3).padding(1).bias(true), (14, 14)),
        (Conv2dConfig::new(8, 16, 3).padding(1), (7, 9)),
        (Conv2dConfig::new(4, 16, 3).padding(2).dilation(2), (11, 33)),
        (Conv2dConfig::new(2, 32, 5).padding(1), (6, 5)),
        (Conv2dConfig::new(16, 32, 3).padding(1).stride(2), (28, 28)),
        (Conv2dConfig::new(6, 16, 3).padding(1).stride(2), (9, 13)),
        (Conv2dConfig::new(16, 32, 1).stride(2), (14, 14)),
        (Conv2dConfig::new(3, 16, 7).padding(3).stride(2), (20, 18)),
        // Grouped (RegNet's strided 3×3), group by group.
        (
            Conv2dConfig::new(48, 48, 3)
                .padding(1)
                .stride(2)
                .groups(3)
                .bias(true),
            (13, 11),
        ),
        (Conv2dConfig::new(8, 64, 3).padding(1).groups(2), (7, 9)),
        (
            Conv2dConfig {
                kernel: [1, 3],
                padding: [0, 1],
                ..Conv2dConfig::new(5, 16, 1)
            },
            (3, 61),
        ),
    ];
    check_path(&cases, ConvPath::Direct);
}

#[test]
fn winograd_equals_the_definition() {
    // Odd and even sizes (tiles past the edge), padding 0 to 2, blocks of whole
    // tile rows and pieces of wide rows, partial vectors of tiles.
    let cases = [
        (Conv2dConfig::new(16, 16, 3).padding(1), (28, 28)),
        (Conv2dConfig::new(32, 32, 3).padding(1).bias(true), (7, 7)),
        (Conv2dConfig::new(64, 64, 3).padding(1), (14, 14)),
        (Conv2dConfig::new(16, 48, 3), (9, 13)),
        (Conv2dConfig::new(24, 16, 3).padding(2), (5, 6)),
        (Conv2dConfig::new(16, 32, 3).padding(1), (3, 70)),
        (Conv2dConfig::new(17, 16, 3).padding(1), (1, 1)),
        (Conv2dConfig::new(16, 16, 3).padding(3), (4, 5)),
        // Grouped (ResNeXt's and RegNet's 3×3), group by group.
        (
            Conv2dConfig::new(64, 64, 3).padding(1).groups(4).bias(true),
            (9, 14),
        ),
        (Conv2dConfig::new(32, 96, 3).padding(1).groups(2), (6, 7)),
        (
            Conv2dConfig {
                padding: [0, 2],
                ..Conv2dConfig::new(20, 16, 3)
            },
            (6, 11),
        ),
    ];
    check_path(&cases, ConvPath::Winograd);
}

#[test]
fn rearranged_weights_follow_changes_to_the_weights() {
    // One configuration per kernel that reads rearranged weights.
    let cases = [
        (Conv2dConfig::new(8, 16, 3).padding(1), (9, 9)),
        (Conv2dConfig::new(80, 8, 3).padding(1), (12, 30)),
    ];
    for (cfg, (h, w)) in cases {
        let mut conv = filled(cfg);
        let x = ramp((2, cfg.in_channels, h, w));
        let before = check(&conv, &x);
        conv.visit_params_mut(&mut |p| p.data.iter_mut().for_each(|v| *v = -*v));
        let after = check(&conv, &x);
        assert!(after.iter().zip(&before).any(|(a, b)| a != b), "{cfg:?}");
    }
}

/// One configuration or more per kernel path (direct, Winograd, GEMM and shifted
/// products, depthwise, grouped image kernels), odd sizes, on every instruction set.
fn every_path_on_every_isa() -> impl Iterator<Item = (Conv2dConfig, (usize, usize), Isa)> {
    let cases = [
        // Direct kernel: several pixel blocks per plane, 2 output blocks.
        (Conv2dConfig::new(8, 32, 3).padding(1).bias(true), (13, 30)),
        (Conv2dConfig::new(16, 16, 3).padding(1).stride(2), (14, 14)),
        (Conv2dConfig::new(8, 16, 3).padding(1).stride(2), (9, 13)),
        // Winograd: several tile blocks and output blocks, odd sizes.
        (Conv2dConfig::new(16, 32, 3).padding(1).bias(true), (13, 30)),
        (Conv2dConfig::new(32, 16, 3).padding(1), (7, 7)),
        (Conv2dConfig::new(16, 32, 3).padding(1), (9, 13)),
        // GEMM and shifted products.
        (Conv2dConfig::new(4, 6, 3).bias(true), (9, 9)),
        (Conv2dConfig::new(80, 8, 3).padding(1), (12, 30)),
        // Depthwise.
        (
            Conv2dConfig::new(8, 8, 5).padding(2).stride(2).groups(8),
            (11, 9),
        ),
        (
            Conv2dConfig::new(8, 8, 3).padding(1).stride(2).groups(8),
            (9, 13),
        ),
        // Grouped image kernels: each group from its own channels.
        (Conv2dConfig::new(64, 64, 3).padding(1).groups(4), (9, 14)),
        (
            Conv2dConfig::new(48, 48, 3).padding(1).stride(2).groups(3),
            (13, 11),
        ),
    ];
    cases
        .into_iter()
        .flat_map(|(cfg, hw)| every_isa().into_iter().map(move |isa| (cfg, hw, isa)))
}

#[test]
fn moments_gathered_while_convolving_equal_those_of_the_output() {
    for (cfg, (h, w), isa) in every_path_on_every_isa() {
        let conv = filled(cfg);
        let x = ramp((3, cfg.in_channels, h, w)).mapv(|v| v + 2.0);
        let (y, got) = conv
            .run_with_moments_on(&x, None, &mut Probe::none(), isa)
            .unwrap();
        assert_eq!(y, conv.forward_on(isa, &x), "{cfg:?} {isa:?}");
        let (n, c, ho, wo) = y.dim();
        let want = channel_moments(y.as_slice().unwrap(), n, c, ho * wo);
        for (ch, ((gm, gv), (wm, wv))) in got.iter().zip(&want).enumerate() {
            assert!(
                (gm - wm).abs() <= 1e-6 * wm.abs().max(1.0),
                "{cfg:?} {isa:?} {ch}: mean {gm} {wm}"
            );
            assert!(
                (gv - wv).abs() <= 1e-6 * wv.abs(),
                "{cfg:?} {isa:?} {ch}: var {gv} {wv}"
            );
        }
    }
}

#[test]
fn an_input_map_is_applied_as_the_input_is_read() {
    for (cfg, (h, w), isa) in every_path_on_every_isa() {
        let conv = filled(cfg);
        let x = ramp((2, cfg.in_channels, h, w));
        let c = cfg.in_channels;
        let map = ChannelMap {
            scale: (0..c).map(|i| 0.5 + i as f32 / c as f32).collect(),
            shift: (0..c).map(|i| i as f32 / c as f32 - 0.6).collect(),
            activation: crate::nn::Activation::Relu,
        };
        let mut mapped = x.clone();
        map.apply_in_place(&mut mapped, 2);
        let want = conv
            .run_with_moments_on(&mapped, None, &mut Probe::none(), isa)
            .unwrap();
        let got = conv
            .run_with_moments_on(&x, Some(&map), &mut Probe::none(), isa)
            .unwrap();
        assert_eq!(got, want, "{cfg:?} {isa:?}");
    }
}

#[test]
fn wrong_channel_count_is_an_error_naming_the_shape() {
    let conv = Conv2d::new(Conv2dConfig::new(3, 4, 3)).unwrap();
    let err = conv.forward(&Array4::zeros((1, 2, 5, 5))).unwrap_err();
    assert!(err.to_string().contains("[1, 2, 5, 5]"), "{err}");
    let err = conv.forward(&Array4::zeros((1, 3, 2, 2))).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}

#[test]
fn invalid_groups_are_rejected() {
    assert!(Conv2d::new(Conv2dConfig::new(6, 4, 3).groups(4)).is_err());
    assert!(Conv2d::new(Conv2dConfig::new(6, 4, 0)).is_err());
}

/// `conv` with about two thirds of its weights zeroed (every output channel keeps
/// some; output channel 0 keeps none).
fn pruned(mut conv: Conv2d) -> Conv2d {
    let per_out = conv.weight().len() / conv.config().out_channels;
    conv.visit_params_mut(&mut |p| {
        if p.name == "weight" {
            for (i, v) in p.data.iter_mut().enumerate() {
                if i % 3 != 0 || i < per_out {
                    *v = 0.0;
                }
            }
        }
    });
    conv
}

/// The calibration pass's call (output and moments) on `isa` under `policy`.
fn with_moments(
    conv: &Conv2d,
    x: &Tensor4,
    map: Option<&ChannelMap>,
    isa: Isa,
    policy: crate::exec::SparsePolicy,
) -> (Tensor4, Vec<(f64, f64)>) {
    let exec = crate::exec::Exec::defaults().with_sparse(policy);
    let mut probe = Probe::none().with_exec(exec);
    conv.run_with_moments_on(x, map, &mut probe, isa).unwrap()
}

#[test]
fn pruned_convolutions_on_the_sparse_kernel_equal_the_dense_paths() {
    use crate::exec::SparsePolicy::{Always, Measured, Never};
    for (cfg, (h, w), isa) in every_path_on_every_isa() {
        let conv = pruned(filled(cfg));
        let engine = conv.engine();
        let on_sparse = engine.nchw_sparse(isa, Always, [h, w]).is_some();
        assert_eq!(on_sparse, isa.kernels().is_some(), "{cfg:?} {isa:?}");
        assert!(engine.nchw_sparse(isa, Never, [h, w]).is_none());
        // Measured: the reorders must pay off (32 multiply-adds or more per value
        // reordered, maps of at most 28 × 28); this weight is a third dense.
        let measured = engine.nchw_sparse(isa, Measured, [h, w]).is_some();
        let nonzeros = conv.weight().iter().filter(|v| **v != 0.0).count();
        let work = nonzeros as f64 / (cfg.in_channels + cfg.out_channels) as f64;
        let suits = work >= 32.0 && h * w <= 28 * 28;
        assert_eq!(measured, on_sparse && suits, "{cfg:?} {isa:?}");
        let large = engine.nchw_sparse(isa, Measured, [29, 28]);
        assert!(large.is_none(), "{cfg:?} {isa:?}");
        let x = ramp((3, cfg.in_channels, h, w)).mapv(|v| v + 0.5);
        let c = cfg.in_channels;
        let map = ChannelMap {
            scale: (0..c).map(|i| 0.5 + i as f32 / c as f32).collect(),
            shift: (0..c).map(|i| i as f32 / c as f32 - 0.6).collect(),
            activation: crate::nn::Activation::Relu,
        };
        for map in [None, Some(&map)] {
            let (want, want_m) = with_moments(&conv, &x, map, isa, Never);
            let (got, got_m) = with_moments(&conv, &x, map, isa, Always);
            let what = format!("{cfg:?} {isa:?} mapped {}", map.is_some());
            let err = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
            let scale = want.mapv(f32::abs).fold(1.0f32, |a, &b| a.max(b));
            assert!(err <= 1e-5 * scale, "{what}: max error {err}");
            for ((gm, gv), (wm, wv)) in got_m.iter().zip(&want_m) {
                assert!(
                    (gm - wm).abs() <= 1e-5 * wm.abs().max(1.0),
                    "{what}: {gm} {wm}"
                );
                assert!(
                    (gv - wv).abs() <= 1e-5 * wv.abs().max(1e-6),
                    "{what}: {gv} {wv}"
                );
            }
        }
        // The eval pass too: ReLU fused, no moments.
        let epilogue = Epilogue {
            activation: crate::nn::Activation::Relu,
            ..Epilogue::default()
        };
        let run = |policy| {
            let exec = crate::exec::Exec::defaults().with_sparse(policy);
            let mut probe = Probe::none().with_exec(exec);
            conv.convolve(&x, None, &mut probe, &epilogue, None, isa)
                .unwrap()
        };
        let (want, got) = (run(Never), run(Always));
        let err = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
        assert!(err <= 1e-5 * 4.0, "{cfg:?} {isa:?} eval: max error {err}");
        assert!(got.iter().all(|v| *v >= 0.0));
    }
}

#[test]
fn a_nan_reaches_the_same_outputs_on_the_sparse_kernel_as_on_the_dense_paths() {
    use crate::exec::SparsePolicy::{Always, Never};
    // The sparse kernel declines a NaN and the dense path runs: the zero weights
    // multiply it into every output whose window holds it, as in PyTorch.
    let cfg = Conv2dConfig::new(16, 32, 3).padding(1);
    let conv = pruned(filled(cfg));
    let mut x = ramp((2, 16, 6, 6));
    x[[1, 3, 2, 4]] = f32::NAN;
    for isa in every_isa() {
        let (want, _) = with_moments(&conv, &x, None, isa, Never);
        let (got, _) = with_moments(&conv, &x, None, isa, Always);
        let nan = |t: &Tensor4| t.mapv(|v| v.is_nan());
        assert_eq!(nan(&got), nan(&want), "{isa:?}");
        assert!(nan(&got).iter().any(|v| *v));
    }
}
