//! How sparse a network is, tensor by tensor.

use crate::layer::Params;
use serde::{Deserialize, Serialize};

/// The zeros of one prunable tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSparsity {
    /// Parameter name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    /// Number of weights.
    pub numel: usize,
    /// Number of weights equal to zero.
    pub zeros: usize,
}

impl TensorSparsity {
    /// `zeros / numel`.
    pub fn sparsity(&self) -> f64 {
        self.zeros as f64 / self.numel.max(1) as f64
    }
}

/// The sparsity of a network as measured (zeros counted), not as planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparsityReport {
    /// Every prunable tensor (conv and linear weights), in walk order.
    pub tensors: Vec<TensorSparsity>,
    /// All trainable parameters (weights, biases, BN γ and β).
    pub params: usize,
    /// Zeros among them.
    pub param_zeros: usize,
}

impl SparsityReport {
    /// Counts the zeros of `model`'s parameters.
    pub fn measure(model: &dyn Params) -> Self {
        let mut report = SparsityReport {
            tensors: Vec::new(),
            params: 0,
            param_zeros: 0,
        };
        model.visit_params(&mut |p| {
            if !p.role.is_trainable() {
                return;
            }
            let zeros = p.data.iter().filter(|&&v| v == 0.0).count();
            report.params += p.data.len();
            report.param_zeros += zeros;
            if p.role.is_prunable() {
                report.tensors.push(TensorSparsity {
                    name: p.name.to_string(),
                    numel: p.data.len(),
                    zeros,
                });
            }
        });
        report
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorSparsity> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Number of prunable weights.
    pub fn prunable(&self) -> usize {
        self.tensors.iter().map(|t| t.numel).sum()
    }

    /// Zeros among the prunable weights.
    pub fn prunable_zeros(&self) -> usize {
        self.tensors.iter().map(|t| t.zeros).sum()
    }

    /// Fraction of the prunable weights that are zero.
    pub fn prunable_sparsity(&self) -> f64 {
        self.prunable_zeros() as f64 / self.prunable().max(1) as f64
    }

    /// Fraction of all trainable parameters that are zero.
    pub fn param_sparsity(&self) -> f64 {
        self.param_zeros as f64 / self.params.max(1) as f64
    }
}
