//! A network that is not part of reflow, with its own tensor type: a plain `Vec<f32>`
//! matrix and a `Linear → BatchNorm1d → ReLU → Linear` multilayer perceptron.
//!
//! Implementing `reflow::Layer` for it is all it takes to run reflow's stages —
//! magnitude pruning, signal measurement and REFLOW — on it.

use reflow::layer::{
    Activation, Layer, LayerKind, NormStats, NormStatsMut, NormUpdate, Param, ParamMut, ParamRole,
    Probe, Site,
};
use reflow::{Error, Result};

/// A row-major `[rows, cols]` matrix: one sample per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols);
        Matrix { rows, cols, data }
    }

    /// As reflow sees an activation: `[batch, channels, spatial = 1]`.
    fn activation(&self) -> Activation<'_> {
        Activation::new(&self.data, self.rows, self.cols, 1).expect("rows·cols values")
    }
}

/// `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Dense {
    shape: [usize; 2], // [out, in]
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Dense {
    pub fn new(inputs: usize, outputs: usize, mut init: impl FnMut() -> f32) -> Self {
        Dense {
            shape: [outputs, inputs],
            weight: (0..inputs * outputs).map(|_| init()).collect(),
            bias: vec![0.0; outputs],
        }
    }

    fn forward(&self, x: &Matrix, path: &str) -> Result<Matrix> {
        let [out, inp] = self.shape;
        if x.cols != inp {
            return Err(Error::InvalidArgument {
                name: path.to_string(),
                reason: format!("expected {inp} features, found {}", x.cols),
            });
        }
        let mut y = Vec::with_capacity(x.rows * out);
        for row in x.data.chunks(inp) {
            for (w, b) in self.weight.chunks(inp).zip(&self.bias) {
                y.push(b + row.iter().zip(w).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        Ok(Matrix::new(x.rows, out, y))
    }
}

/// Batch normalisation over the features of a `[N, C]` matrix.
#[derive(Debug, Clone)]
pub struct BatchNorm1d {
    shape: [usize; 1],
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    batches: i64,
    eps: f32,
}

impl BatchNorm1d {
    pub fn new(c: usize) -> Self {
        BatchNorm1d {
            shape: [c],
            gamma: vec![1.0; c],
            beta: vec![0.0; c],
            mean: vec![0.0; c],
            var: vec![1.0; c],
            batches: 0,
            eps: 1e-5,
        }
    }

    fn normalise(&self, x: &Matrix, mean: &[f32], var: &[f32]) -> Matrix {
        let mut y = x.clone();
        for row in y.data.chunks_mut(x.cols) {
            for (c, v) in row.iter_mut().enumerate() {
                *v = self.gamma[c] * (*v - mean[c]) / (var[c] + self.eps).sqrt() + self.beta[c];
            }
        }
        y
    }

    /// Train mode: batch statistics normalise, and update the running ones.
    fn forward_train(&mut self, x: &Matrix, update: NormUpdate) -> Matrix {
        let n = x.rows as f64;
        let mut mean = vec![0.0f64; x.cols];
        let mut var = vec![0.0f64; x.cols];
        for row in x.data.chunks(x.cols) {
            row.iter()
                .enumerate()
                .for_each(|(c, &v)| mean[c] += v as f64 / n);
        }
        for row in x.data.chunks(x.cols) {
            row.iter()
                .enumerate()
                .for_each(|(c, &v)| var[c] += (v as f64 - mean[c]).powi(2) / n);
        }
        let (m32, v32): (Vec<f32>, Vec<f32>) = mean
            .iter()
            .zip(&var)
            .map(|(&m, &v)| (m as f32, v as f32))
            .unzip();
        let y = self.normalise(x, &m32, &v32);
        self.batches += 1;
        let f = update.factor(self.batches);
        for c in 0..x.cols {
            self.mean[c] = ((1.0 - f) * self.mean[c] as f64 + f * mean[c]) as f32;
            let unbiased = var[c] * n / (n - 1.0);
            self.var[c] = ((1.0 - f) * self.var[c] as f64 + f * unbiased) as f32;
        }
        y
    }
}

fn relu(mut x: Matrix) -> Matrix {
    x.data.iter_mut().for_each(|v| *v = v.max(0.0));
    x
}

/// `fc2(relu(bn1(fc1(x))))`, with PyTorch-style parameter names.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub fc1: Dense,
    pub bn1: BatchNorm1d,
    pub fc2: Dense,
}

impl Mlp {
    /// Seeded weights uniform in ±1/√fan_in.
    pub fn new(inputs: usize, hidden: usize, outputs: usize, seed: u64) -> Self {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let (s1, s2) = (1.0 / (inputs as f32).sqrt(), 1.0 / (hidden as f32).sqrt());
        Mlp {
            fc1: Dense::new(inputs, hidden, || s1 * uniform()),
            bn1: BatchNorm1d::new(hidden),
            fc2: Dense::new(hidden, outputs, || s2 * uniform()),
        }
    }

    /// Runs `bn` (eval or train) between the two dense layers, reporting its taps.
    fn run(
        &self,
        x: &Matrix,
        probe: &mut Probe<'_>,
        bn: impl FnOnce(&Matrix) -> Matrix,
    ) -> Result<Matrix> {
        let h = probe.scoped("fc1", |p| self.fc1.forward(x, p.path()))?;
        let h = probe.scoped("bn1", |p| {
            p.emit(LayerKind::BatchNorm, Site::Input, h.activation());
            let y = bn(&h);
            p.emit(LayerKind::BatchNorm, Site::Output, y.activation());
            y
        });
        probe.scoped("fc2", |p| self.fc2.forward(&relu(h), p.path()))
    }
}

impl Layer for Mlp {
    type Input = Matrix;
    type Output = Matrix;

    fn forward_with(&self, x: &Matrix, probe: &mut Probe<'_>) -> Result<Matrix> {
        self.run(x, probe, |h| {
            self.bn1.normalise(h, &self.bn1.mean, &self.bn1.var)
        })
    }

    fn forward_train(
        &mut self,
        x: &Matrix,
        update: NormUpdate,
        probe: &mut Probe<'_>,
    ) -> Result<Matrix> {
        // Train-mode batch norm needs `&mut self.bn1` while the dense layers are read:
        // take it out for the pass.
        let mut bn = self.bn1.clone();
        let y = self.run(x, probe, |h| bn.forward_train(h, update));
        self.bn1 = bn;
        y
    }

    fn visit_params(&self, f: &mut dyn FnMut(Param<'_>)) {
        let tensors: [(&str, ParamRole, &[usize], &[f32]); 8] = [
            (
                "fc1.weight",
                ParamRole::Weight,
                &self.fc1.shape,
                &self.fc1.weight,
            ),
            (
                "fc1.bias",
                ParamRole::Bias,
                &self.fc1.shape[..1],
                &self.fc1.bias,
            ),
            (
                "bn1.weight",
                ParamRole::NormWeight,
                &self.bn1.shape,
                &self.bn1.gamma,
            ),
            (
                "bn1.bias",
                ParamRole::NormBias,
                &self.bn1.shape,
                &self.bn1.beta,
            ),
            (
                "bn1.running_mean",
                ParamRole::RunningMean,
                &self.bn1.shape,
                &self.bn1.mean,
            ),
            (
                "bn1.running_var",
                ParamRole::RunningVar,
                &self.bn1.shape,
                &self.bn1.var,
            ),
            (
                "fc2.weight",
                ParamRole::Weight,
                &self.fc2.shape,
                &self.fc2.weight,
            ),
            (
                "fc2.bias",
                ParamRole::Bias,
                &self.fc2.shape[..1],
                &self.fc2.bias,
            ),
        ];
        for (name, role, shape, data) in tensors {
            f(Param {
                name,
                role,
                shape,
                data,
            });
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(ParamMut<'_>)) {
        let (fc1, bn1, fc2) = (&mut self.fc1, &mut self.bn1, &mut self.fc2);
        let tensors: [(&str, ParamRole, &[usize], &mut [f32]); 8] = [
            ("fc1.weight", ParamRole::Weight, &fc1.shape, &mut fc1.weight),
            ("fc1.bias", ParamRole::Bias, &fc1.shape[..1], &mut fc1.bias),
            (
                "bn1.weight",
                ParamRole::NormWeight,
                &bn1.shape,
                &mut bn1.gamma,
            ),
            ("bn1.bias", ParamRole::NormBias, &bn1.shape, &mut bn1.beta),
            (
                "bn1.running_mean",
                ParamRole::RunningMean,
                &bn1.shape,
                &mut bn1.mean,
            ),
            (
                "bn1.running_var",
                ParamRole::RunningVar,
                &bn1.shape,
                &mut bn1.var,
            ),
            ("fc2.weight", ParamRole::Weight, &fc2.shape, &mut fc2.weight),
            ("fc2.bias", ParamRole::Bias, &fc2.shape[..1], &mut fc2.bias),
        ];
        for (name, role, shape, data) in tensors {
            f(ParamMut {
                name,
                role,
                shape,
                data,
            });
        }
    }

    fn visit_norms(&self, f: &mut dyn FnMut(&str, NormStats<'_>)) {
        let bn = &self.bn1;
        f(
            "bn1",
            NormStats {
                running_mean: &bn.mean,
                running_var: &bn.var,
                num_batches_tracked: bn.batches,
                eps: bn.eps,
            },
        );
    }

    fn visit_norms_mut(&mut self, f: &mut dyn FnMut(&str, NormStatsMut<'_>)) {
        let bn = &mut self.bn1;
        f(
            "bn1",
            NormStatsMut {
                running_mean: &mut bn.mean,
                running_var: &mut bn.var,
                num_batches_tracked: &mut bn.batches,
                eps: bn.eps,
            },
        );
    }
}

/// `batches` seeded batches of `rows` samples with `cols` features, mean 0.5, not
/// centred, so the batch-norm statistics are non-trivial.
pub fn synthetic_batches(batches: usize, rows: usize, cols: usize, seed: u64) -> Vec<Matrix> {
    let mut state = seed | 1;
    (0..batches)
        .map(|_| {
            let data = (0..rows * cols)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    0.5 + (i % cols) as f32 * 0.1 + (state >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect();
            Matrix::new(rows, cols, data)
        })
        .collect()
}
