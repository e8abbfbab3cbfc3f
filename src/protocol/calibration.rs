//! The calibration images of a study: drawn, normalised and checked against the
//! network before any pass over the data ([`Study::calibration`]).

use super::{Method, Pattern, RepairChoice, Study};
use crate::data::{ImageBatches, ImageSource, Normalization};
use crate::error::{Error, Result};
use crate::io::check_image_pixels;
use crate::layer::{ActivationView, Layer, LayerKind, Observer, Probe, Site, Tap};
use crate::models::Model;
use crate::nn::Tensor4;
use crate::prune::{matches, Unfold};
use crate::rescale::ReflowMode;

impl Study {
    /// The calibration batches of the study: `count` of `images` in batches of
    /// `batch`, the first ones or, with a `seed`, a seeded shuffle of them all
    /// ([`ImageBatches::shuffled`]), normalised by `norm`; checked before any pass over
    /// the data ([`Study::check_calibration`]), and the images drawn checked by
    /// their source (a folder reads their headers).
    ///
    /// ```
    /// use reflow::io::{IdxImages, Normalization};
    /// use reflow::models::{Model, ResNet, ResNetConfig};
    /// use reflow::protocol::{Pattern, Study};
    ///
    /// let net = Model::new(ResNet::new(ResNetConfig::cifar_resnet(8)?.with_in_channels(1))?);
    /// let images = IdxImages::from_pixels([10, 1, 8, 8], vec![7; 640])?;
    /// let norm = Normalization::fashion_mnist();
    /// let study = Study::new(Pattern::Unstructured, vec![0.5]);
    /// let batches = study.calibration(&net, &images, (6, 4), Some(1), &norm)?;
    /// assert_eq!((batches.len(), batches.indices().len()), (6, 6));
    /// assert!(study.calibration(&net, &images, (11, 4), None, &norm).is_err());
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn calibration<'a>(
        &self,
        net: &Model,
        images: &'a dyn ImageSource,
        (count, batch): (usize, usize),
        seed: Option<u64>,
        norm: &'a Normalization,
    ) -> Result<ImageBatches<'a>> {
        self.check_calibration(net, images, count, batch)?;
        let batches = ImageBatches::new(images, count, batch, norm)?;
        let batches = match seed {
            Some(seed) => batches.shuffled(seed),
            None => batches,
        };
        images.check(batches.indices())?;
        Ok(batches)
    }

    /// Before any forward pass over the data: every batch norm of `net` gets at least
    /// two values per channel to compute a variance from — in each calibration batch
    /// (`count` of `images`, in batches of `batch`) for the running modes, in the
    /// whole set for `exact`; and in each half too for the automatic repair. How many
    /// values a batch norm sees per image is measured on one blank image.
    pub fn check_calibration(
        &self,
        net: &Model,
        images: &dyn ImageSource,
        count: usize,
        batch: usize,
    ) -> Result<()> {
        /// The smallest plane a batch norm sees; with SparseGPT, each convolution's
        /// and linear layer's input columns and output positions per image.
        struct Blank {
            smallest: usize,
            columns: Option<Vec<(String, usize, usize)>>,
        }
        impl Observer for Blank {
            fn wants(&self, tap: &Tap<'_>) -> bool {
                match (tap.kind, tap.site) {
                    (LayerKind::BatchNorm, Site::Output) => true,
                    (LayerKind::Conv | LayerKind::Linear, Site::Input) => self.columns.is_some(),
                    _ => false,
                }
            }
            fn observe(&mut self, tap: &Tap<'_>, a: ActivationView<'_>) {
                if tap.kind == LayerKind::BatchNorm {
                    self.smallest = self.smallest.min(a.spatial);
                } else if let (Some(columns), Ok(unfold)) =
                    (self.columns.as_mut(), Unfold::new(a, tap.window))
                {
                    columns.push((tap.layer.to_string(), unfold.rows(), unfold.columns()));
                }
            }
        }
        if batch == 0 {
            return Err(Error::zero("calibration batch size"));
        }
        let [c, h, w] = images.image_dims();
        // The probe is one image of the calibration set's size: bounded like any image.
        check_image_pixels("calibration images", h, w)?;
        let mut blank = Blank {
            smallest: usize::MAX,
            columns: (self.method == Method::SparseGpt).then(Vec::new),
        };
        let image = Tensor4::zeros((1, c, h, w));
        net.forward_with(&image, &mut Probe::new(&mut blank))?;
        let per_image = blank.smallest;
        let count = count.min(images.len());
        self.check_sparsegpt_rank(blank.columns.unwrap_or_default(), count, [h, w])?;
        // The automatic repair also repairs from each half of the images.
        let mut sets = vec![(count, "")];
        if self.repair == RepairChoice::Auto {
            let half = " (half of them, for the automatic repair)";
            sets.extend([(count.div_ceil(2), half), (count / 2, half)]);
        }
        for (count, which) in sets {
            let (images_at_once, name) = match self.reflow.mode() {
                ReflowMode::Exact => (count, "calibration count"),
                _ => match count % batch {
                    0 => (batch.min(count), "calibration batch size"),
                    last => (last, "calibration batch size"),
                },
            };
            let values = images_at_once.saturating_mul(per_image);
            if values < 2 {
                return Err(Error::invalid(
                    name,
                    format!(
                        "{images_at_once} image(s){which} of {h}x{w} give the smallest batch norms {values} value(s) per channel; a variance needs two"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Study {
    /// SparseGPT's Hessian of each layer it prunes needs full rank: at least as many
    /// calibration positions (`count` images times the layer's `positions` per
    /// image) as the layer has input `columns`. `layers` holds `(layer, columns,
    /// positions)` in forward order; the first one short is the error.
    fn check_sparsegpt_rank(
        &self,
        layers: Vec<(String, usize, usize)>,
        count: usize,
        [h, w]: [usize; 2],
    ) -> Result<()> {
        for (layer, columns, positions) in layers {
            let name = format!("{layer}.weight");
            let excluded = self.exclude.iter().any(|e| matches(e, &name));
            let left_dense = matches!(self.pattern, Pattern::Nm(_, m) if columns % m != 0);
            let have = count.saturating_mul(positions);
            if excluded || left_dense || have >= columns {
                continue;
            }
            return Err(Error::invalid(
                "calibration count",
                format!(
                    "\"{name}\": {count} image(s) of {h}x{w} give {have} calibration positions, fewer than its {columns} input columns: SparseGPT's Hessian would have no full rank; give at least {} images or --exclude it",
                    columns.div_ceil(positions.max(1))
                ),
            ));
        }
        Ok(())
    }
}
