//! Fidelity to a reference network: top-1 agreement and the KL divergence of the
//! softmax outputs, image by image, without labels.

use crate::data::CalibrationData;
use crate::data::{Tensor2, Tensor4};
use crate::error::{Error, Result};
use crate::layer::Layer;
use crate::metrics::argmax;
use serde::{Deserialize, Serialize};

/// How close a network's outputs are to a reference network's on the same images.
///
/// - `agreement`: the fraction of images on which the two top-1 classes are equal;
/// - `kl`: the mean over the images of KL(p_reference ‖ p_network) of the softmax
///   outputs, in nats.
///
/// Neither needs a label. A network compared with itself has agreement 1 and KL 0;
/// NaN outputs give a NaN KL.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Images compared.
    pub images: usize,
    /// Fraction of images with the same top-1 class, in [0, 1].
    pub agreement: f64,
    /// Mean KL(reference ‖ network), natural log.
    pub kl: f64,
}

/// A network's outputs on a fixed sequence of images, kept to measure other networks
/// against: each image's log-softmax and top-1 class.
///
/// Record the dense network once, then measure each pruned or repaired network on
/// the same images in the same order with [`Reference::fidelity`] (or stream their
/// outputs through a [`FidelityMeter`]).
///
/// ```
/// use reflow::prelude::*;
/// use reflow::nn::Tensor4;
/// use reflow::trust::Reference;
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let images = vec![Tensor4::from_shape_fn((4, 3, 8, 8), |(n, c, h, w)| (n + c * h + w) as f32 / 9.0)];
/// let dense = Reference::record(&net, &images)?;
/// let itself = dense.fidelity(&net, &images)?;
/// assert_eq!((itself.images, itself.agreement, itself.kl), (4, 1.0, 0.0));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reference {
    classes: usize,
    /// `[images × classes]`, row-major.
    log_probs: Vec<f32>,
    top1: Vec<u32>,
}

impl Reference {
    /// An empty reference, to [`push`](Reference::push) outputs into.
    pub fn new() -> Self {
        Self::default()
    }

    /// `model`'s outputs on every batch of `data`, in order. Fails when `data` has no
    /// image.
    pub fn record<L>(model: &L, data: &dyn CalibrationData<Tensor4>) -> Result<Self>
    where
        L: Layer<Input = Tensor4, Output = Tensor2> + ?Sized,
    {
        let mut reference = Reference::new();
        data.try_for_each_batch(&mut |x| reference.push(&model.forward(x)?))?;
        if reference.is_empty() {
            return Err(Error::empty("reference images", "no image to record"));
        }
        Ok(reference)
    }

    /// Appends the outputs (logits) of a batch, one row per image. Every batch must
    /// have the same number of classes, at least one.
    pub fn push(&mut self, logits: &Tensor2) -> Result<()> {
        let classes = logits.ncols();
        if classes == 0 || (!self.top1.is_empty() && classes != self.classes) {
            return Err(Error::shape(
                "logits",
                format!("[_, {}]", self.classes.max(1)),
                logits.shape(),
            ));
        }
        self.classes = classes;
        self.log_probs.reserve(logits.len());
        for row in logits.rows() {
            self.top1.push(argmax(row.iter().copied()) as u32);
            let start = self.log_probs.len();
            self.log_probs.extend(row.iter().copied());
            log_softmax(&mut self.log_probs[start..]);
        }
        Ok(())
    }

    /// Images recorded.
    pub fn len(&self) -> usize {
        self.top1.len()
    }

    /// True when no image is recorded.
    pub fn is_empty(&self) -> bool {
        self.top1.is_empty()
    }

    /// Classes per image (0 while empty).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The top-1 class of every image, in order.
    pub fn top1(&self) -> &[u32] {
        &self.top1
    }

    /// The log-softmax of image `i`'s outputs.
    pub fn log_probs(&self, i: usize) -> &[f32] {
        &self.log_probs[i * self.classes..(i + 1) * self.classes]
    }

    /// How close `model` is to this reference on `data`, which must be the images it
    /// was recorded on, in the same order.
    pub fn fidelity<L>(&self, model: &L, data: &dyn CalibrationData<Tensor4>) -> Result<Fidelity>
    where
        L: Layer<Input = Tensor4, Output = Tensor2> + ?Sized,
    {
        let mut meter = self.meter();
        data.try_for_each_batch(&mut |x| meter.add(&model.forward(x)?))?;
        meter.finish()
    }

    /// A meter that takes a network's outputs batch by batch, in this reference's
    /// image order.
    pub fn meter(&self) -> FidelityMeter<'_> {
        self.meter_at(0)
    }

    /// A meter that takes a network's outputs from image `first` of this reference
    /// on (a part of the images compared on its own, as a sweep's shards do).
    pub fn meter_at(&self, first: usize) -> FidelityMeter<'_> {
        FidelityMeter {
            reference: self,
            first,
            next: first,
            agree: 0,
            kl: 0.0,
        }
    }

    /// `other` (recorded on the same images) against this reference, on the images
    /// `keep` selects by position. Fails when the two disagree in images or classes.
    pub fn compare(&self, other: &Reference, keep: impl Fn(usize) -> bool) -> Result<Fidelity> {
        if other.len() != self.len() || other.classes != self.classes {
            return Err(Error::shape(
                "compared outputs",
                format!("[{}, {}]", self.len(), self.classes),
                [other.len(), other.classes],
            ));
        }
        let (mut images, mut agree, mut kl) = (0, 0, 0.0);
        for i in (0..self.len()).filter(|&i| keep(i)) {
            images += 1;
            agree += (self.top1[i] == other.top1[i]) as usize;
            kl += kl_divergence(self.log_probs(i), other.log_probs(i));
        }
        Ok(Fidelity::from_sums(images, agree, kl))
    }
}

impl Fidelity {
    /// The fidelity over `images` images of which `agree` agree with the reference,
    /// `kl` the sum of their KL divergences.
    pub fn from_sums(images: usize, agree: usize, kl: f64) -> Fidelity {
        let n = images.max(1) as f64;
        Fidelity {
            images,
            agreement: agree as f64 / n,
            kl: kl / n,
        }
    }
}

/// A network's outputs compared with a [`Reference`] as they come, batch by batch.
#[derive(Debug)]
pub struct FidelityMeter<'r> {
    reference: &'r Reference,
    first: usize,
    next: usize,
    agree: usize,
    kl: f64,
}

impl FidelityMeter<'_> {
    /// Compares the next batch's outputs (logits, one row per image).
    pub fn add(&mut self, logits: &Tensor2) -> Result<()> {
        let reference = self.reference;
        if logits.ncols() != reference.classes || self.next + logits.nrows() > reference.len() {
            return Err(Error::shape(
                "logits",
                format!(
                    "[at most {}, {}]",
                    reference.len() - self.next,
                    reference.classes
                ),
                logits.shape(),
            ));
        }
        let mut row_probs = Vec::with_capacity(reference.classes);
        for row in logits.rows() {
            let i = self.next;
            self.agree += (argmax(row.iter().copied()) as u32 == reference.top1[i]) as usize;
            row_probs.clear();
            row_probs.extend(row.iter().copied());
            log_softmax(&mut row_probs);
            self.kl += kl_divergence(reference.log_probs(i), &row_probs);
            self.next += 1;
        }
        Ok(())
    }

    /// What was compared so far: the images whose top-1 agrees with the reference's,
    /// and the sum of their KL divergences (in image order).
    pub fn sums(&self) -> (usize, f64) {
        (self.agree, self.kl)
    }

    /// The fidelity over the images compared; fails unless they reach the reference's
    /// last image.
    pub fn finish(self) -> Result<Fidelity> {
        if self.next != self.reference.len() {
            return Err(Error::Data(format!(
                "{} images compared, the reference has {}",
                self.next,
                self.reference.len()
            )));
        }
        Ok(Fidelity::from_sums(
            self.next - self.first,
            self.agree,
            self.kl,
        ))
    }
}

/// `row` ← log softmax(`row`), computed in f64.
fn log_softmax(row: &mut [f32]) {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_sum = max + sum.ln();
    let any_nan = row.iter().any(|v| v.is_nan());
    for v in row.iter_mut() {
        *v = match any_nan {
            true => f32::NAN,
            false => (*v as f64 - log_sum) as f32,
        };
    }
}

/// KL(p ‖ q) from log-probabilities, in f64. Terms where p is 0 count 0.
fn kl_divergence(log_p: &[f32], log_q: &[f32]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&lp, &lq)| {
            let p = (lp as f64).exp();
            match p == 0.0 {
                true => 0.0,
                false => p * (lp as f64 - lq as f64),
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn kl_and_agreement_by_hand() {
        let mut dense = Reference::new();
        dense.push(&array![[0.0f32, 0.0], [2.0, 0.0]]).unwrap();
        let mut meter = dense.meter();
        meter.add(&array![[0.0f32, 0.0]]).unwrap();
        meter.add(&array![[0.0f32, 1.0]]).unwrap();
        let f = meter.finish().unwrap();
        // Image 2: p = softmax(2, 0), q = softmax(0, 1).
        let p = [2f64.exp() / (2f64.exp() + 1.0), 1.0 / (2f64.exp() + 1.0)];
        let q = [1.0 / (1.0 + 1f64.exp()), 1f64.exp() / (1.0 + 1f64.exp())];
        let kl = p[0] * (p[0] / q[0]).ln() + p[1] * (p[1] / q[1]).ln();
        assert_eq!(f.images, 2);
        assert_eq!(f.agreement, 0.5);
        assert!((f.kl - kl / 2.0).abs() < 1e-6, "{} vs {}", f.kl, kl / 2.0);
    }

    #[test]
    fn a_network_against_itself_and_bad_shapes() {
        let logits = array![[1.0f32, -3.0, 0.5], [-1.0, 40.0, 2.0]];
        let mut dense = Reference::new();
        dense.push(&logits).unwrap();
        let f = dense.compare(&dense.clone(), |_| true).unwrap();
        assert_eq!((f.agreement, f.kl), (1.0, 0.0));
        assert!(dense.meter().finish().is_err(), "no image compared");
        assert!(
            dense.meter().add(&array![[1.0f32, 2.0]]).is_err(),
            "2 classes"
        );
        assert!(dense.push(&array![[1.0f32]]).is_err(), "1 class after 3");
        let mut nan = dense.meter();
        nan.add(&array![[f32::NAN, 0.0, 0.0], [0.0, 1.0, 0.0]])
            .unwrap();
        assert!(nan.finish().unwrap().kl.is_nan());
    }
}
