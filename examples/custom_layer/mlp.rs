//! A network that is not part of reflow, with its own tensor type: a plain `Vec<f32>`
//! matrix and a `Linear → BatchNorm1d → ReLU → Linear` multilayer perceptron.
//!
//! Implementing `reflow::layer::Params` (the parameter walk: the leaves report their
//! tensors, `reflow::params!` names the network's children once) and `reflow::Layer`
//! (the two passes) for it is all it takes to run reflow's stages — magnitude
//! pruning, signal measurement and REFLOW — on it.

use reflow::layer::{ActivationView, Layer, LayerKind, NormParams, NormParamsMut, NormUpdate};
use reflow::layer::{Params, Probe, Site, Visitor, VisitorMut};
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
    fn activation(&self) -> ActivationView<'_> {
        ActivationView::new(&self.data, self.rows, self.cols, 1).expect("rows·cols values")
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
        self.batches = self.batches.saturating_add(1);
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

impl Params for Dense {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.weight_bias("", &self.shape, &self.weight, Some(&self.bias));
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.weight_bias("", &self.shape, &mut self.weight, Some(&mut self.bias));
    }
}

impl Params for BatchNorm1d {
    fn visit(&self, v: &mut Visitor<'_>) {
        let (g, b, m, var) = (&self.gamma, &self.beta, &self.mean, &self.var);
        v.batch_norm("", NormParams::new(g, b, m, var, self.batches, self.eps));
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        let (g, b, m, var) = (
            &mut self.gamma,
            &mut self.beta,
            &mut self.mean,
            &mut self.var,
        );
        v.batch_norm(
            "",
            NormParamsMut::new(g, b, m, var, &mut self.batches, self.eps),
        );
    }
}

// The children, each named once (by its field's name): both walks.
reflow::params!(Mlp { fc1, bn1, fc2 });

impl Layer for Mlp {
    type Input = Matrix;
    type Output = Matrix;

    fn forward_with(&self, x: &Matrix, probe: &mut Probe<'_>) -> Result<Matrix> {
        self.run(x, probe, |h| {
            self.bn1.normalise(h, &self.bn1.mean, &self.bn1.var)
        })
    }

    fn forward_train(&mut self, x: &Matrix, probe: &mut Probe<'_>) -> Result<Matrix> {
        // Train-mode batch norm needs `&mut self.bn1` while the dense layers are read:
        // take it out for the pass. The probe says how to fold the batch in.
        let (mut bn, update) = (self.bn1.clone(), probe.update());
        let y = self.run(x, probe, |h| bn.forward_train(h, update));
        self.bn1 = bn;
        y
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
