//! Folders of JPEG and PNG images in torchvision's `ImageFolder` layout (feature
//! `image`).

use super::decode::{check_channels, header, image_error, read_image};
use super::{
    is_large_image, Dataset, EvalTransform, IdxLabels, ImageSource, Normalization, Pixels,
};
use crate::data::Tensor4;
use crate::error::{Error, Result};
use ndarray::Array4;
use rayon::prelude::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The extensions torchvision's `ImageFolder` takes (compared lower-case).
const IMAGE_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];
/// Those of them `reflow` decodes.
const DECODED: [&str; 3] = [".jpg", ".jpeg", ".png"];

/// JPEG and PNG images in torchvision's `ImageFolder` layout: one sub-folder per class,
/// classes sorted by name (class `i` is the `i`-th), and in each class every image in
/// it or its sub-folders, sorted as torchvision sorts them. Files of other extensions
/// are ignored, as torchvision ignores them; a BMP, TIFF, PPM/PGM or WebP image, which
/// torchvision would read, is an error.
///
/// Each image is decoded when a batch asks for it (in parallel; the set is never held
/// in memory), converted to the network's input channels as Pillow's `convert("L")`
/// (1) or `convert("RGB")` (3) does, and transformed by an [`EvalTransform`]. Opening
/// reads every file's header, so a file that is no image, a 16-bit PNG, or an image
/// whose size would disagree with the others is an error before any work; a file
/// corrupt past its header is one when it is decoded. Every error names the file.
///
/// ```no_run
/// use reflow::io::{EvalTransform, ImageFolder, ImageSource, Normalization};
///
/// // val/n01440764/ILSVRC2012_val_00000293.JPEG, ...
/// let val = ImageFolder::open("val", 3, EvalTransform::imagenet())?;
/// println!("{} images of {} classes", val.len(), val.classes().len());
/// let x = val.tensor(&[0, 1], &Normalization::imagenet())?; // [2, 3, 224, 224]
/// let test = val.into_dataset()?;
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ImageFolder {
    classes: Vec<String>,
    files: Vec<PathBuf>,
    labels: Vec<u32>,
    transform: EvalTransform,
    dims: [usize; 3],
}

/// The entries of `dir` (following symbolic links), split into folders and others,
/// each sorted by name as Python sorts strings.
fn entries(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for entry in read {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            dirs.push(path);
        } else {
            files.push(path);
        }
    }
    let by_name = |a: &PathBuf, b: &PathBuf| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    };
    dirs.sort_by(by_name);
    files.sort_by(by_name);
    Ok((dirs, files))
}

/// Marks `dir` walked: fails, naming it, when its canonical path was walked before
/// (a symbolic link to a parent, to itself, or to a folder walked already), so that
/// no walk loops or counts an image twice.
fn first_visit(seen: &mut HashSet<PathBuf>, dir: &Path) -> Result<()> {
    let canonical = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    match seen.insert(canonical.clone()) {
        true => Ok(()),
        false => Err(image_error(
            dir,
            format!(
                "this folder is {} again (a symbolic link to a folder walked already): it would be walked twice",
                canonical.display()
            ),
        )),
    }
}

/// `dir` and every folder below it, in the order of Python's `sorted(os.walk(dir))`:
/// by the whole path, as a string. Every folder is walked once (`seen`).
fn walk(dir: &Path, seen: &mut HashSet<PathBuf>) -> Result<Vec<PathBuf>> {
    first_visit(seen, dir)?;
    let mut all = vec![dir.to_path_buf()];
    let mut next = 0;
    while next < all.len() {
        let (dirs, _) = entries(&all[next])?;
        for d in &dirs {
            first_visit(seen, d)?;
        }
        all.extend(dirs);
        next += 1;
    }
    all.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(all)
}

/// The error for an image `path` of a kind torchvision reads and reflow does not.
fn unread(path: &Path, ext: &str) -> Error {
    image_error(
        path,
        format!("{ext} images are not read; reflow reads JPEG and PNG"),
    )
}

/// The extension of `path` among `IMAGE_EXTENSIONS`, lower-case.
fn image_extension(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    IMAGE_EXTENSIONS.into_iter().find(|e| name.ends_with(e))
}

impl ImageFolder {
    /// Scans `dir` and reads every image's header. `channels` is the network's input
    /// channels: 1 (gray) or 3 (RGB).
    ///
    /// Fails, naming the folder or file, when `dir` has no class sub-folder, a class
    /// has no image, a file with an image extension is no JPEG or PNG (or is 16-bit),
    /// or the transformed sizes disagree (give a crop, or images of one size).
    pub fn open(dir: impl AsRef<Path>, channels: usize, transform: EvalTransform) -> Result<Self> {
        let folder = ImageFolder::scan(dir, channels, transform)?;
        folder.check(&(0..folder.len()).collect::<Vec<_>>())?;
        Ok(folder)
    }

    /// Lists the images of `dir` as [`ImageFolder::open`] does, but reads no header
    /// beyond the first image's (none with a crop): for a large folder of which a run
    /// uses a few images (a calibration subset of ImageNet's training set, say), which
    /// [`ImageFolder::check`] then checks. An image that is not what its name says
    /// then fails when it is decoded, naming the file.
    pub fn scan(dir: impl AsRef<Path>, channels: usize, transform: EvalTransform) -> Result<Self> {
        Self::list(dir.as_ref(), channels, transform, false)
    }

    /// Like [`ImageFolder::scan`], and also takes a folder with no class sub-folder
    /// whose images lie directly in it (sorted by name): a folder without labels, for
    /// what needs none (calibration images, fidelity to a dense network). Such a folder
    /// has no [`classes`](ImageFolder::classes) and [`is_labelled`](ImageFolder::is_labelled)
    /// is false.
    pub fn scan_unlabelled(
        dir: impl AsRef<Path>,
        channels: usize,
        transform: EvalTransform,
    ) -> Result<Self> {
        Self::list(dir.as_ref(), channels, transform, true)
    }

    fn list(dir: &Path, channels: usize, transform: EvalTransform, flat: bool) -> Result<Self> {
        check_channels(channels)?;
        transform.validate()?;
        let (class_dirs, loose) = entries(dir)?;
        if class_dirs.is_empty() && flat {
            let mut files = Vec::new();
            for file in loose {
                match image_extension(&file) {
                    Some(ext) if DECODED.contains(&ext) => files.push(file),
                    Some(ext) => return Err(unread(&file, ext)),
                    None => {}
                }
            }
            if files.is_empty() {
                return Err(image_error(dir, "no class sub-folder and no image"));
            }
            let dims = Self::dims(&files[0], channels, transform)?;
            return Ok(ImageFolder {
                classes: Vec::new(),
                files,
                labels: Vec::new(),
                transform,
                dims,
            });
        }
        if class_dirs.is_empty() {
            let images = loose
                .iter()
                .filter(|p| image_extension(p).is_some())
                .count();
            let hint = match images {
                0 => "no class sub-folder and no image".to_string(),
                n => format!("no class sub-folder ({n} images directly in it: put them in a sub-folder, one per class)"),
            };
            return Err(image_error(dir, hint));
        }
        let (mut classes, mut files, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        first_visit(&mut seen, dir)?;
        for (label, class_dir) in class_dirs.iter().enumerate() {
            let before = files.len();
            for folder in walk(class_dir, &mut seen)? {
                for file in entries(&folder)?.1 {
                    match image_extension(&file) {
                        Some(ext) if DECODED.contains(&ext) => {
                            files.push(file);
                            labels.push(label as u32);
                        }
                        Some(ext) => return Err(unread(&file, ext)),
                        None => {}
                    }
                }
            }
            if files.len() == before {
                return Err(image_error(
                    class_dir,
                    "no JPEG or PNG image in this class folder",
                ));
            }
            let name = class_dir.file_name().unwrap_or_default();
            classes.push(name.to_string_lossy().into_owned());
        }
        let dims = Self::dims(&files[0], channels, transform)?;
        Ok(ImageFolder {
            classes,
            files,
            labels,
            transform,
            dims,
        })
    }

    /// The output size: a crop's, or the `first` image's after the resize.
    fn dims(first: &Path, channels: usize, transform: EvalTransform) -> Result<[usize; 3]> {
        let [h, w] = match transform.crop {
            Some(c) => [c, c],
            None => {
                let [ih, iw] = header(first)?;
                transform
                    .output_dims(ih, iw)
                    .map_err(|e| image_error(first, e))?
            }
        };
        Ok([channels, h, w])
    }

    /// False for a folder of images without class sub-folders
    /// ([`ImageFolder::scan_unlabelled`]).
    pub fn is_labelled(&self) -> bool {
        !self.classes.is_empty()
    }

    /// Checks the headers of images `indices` (in parallel): each must be an 8-bit
    /// JPEG or PNG (a JPEG whole, to its end-of-image marker) of at most
    /// [`REFUSED_IMAGE_PIXELS`](super::REFUSED_IMAGE_PIXELS) pixels, whose transformed
    /// size is the folder's. [`ImageFolder::open`] checks every image; after
    /// [`ImageFolder::scan`], check the ones a run will use. Returns the images above
    /// Pillow's warning size, [`MAX_IMAGE_PIXELS`](super::MAX_IMAGE_PIXELS) (Pillow
    /// warns of them; they are read).
    pub fn check(&self, indices: &[usize]) -> Result<Vec<PathBuf>> {
        let [_, h, w] = self.dims;
        let large = indices
            .par_iter()
            .map(|&i| {
                let path = self.path(i)?;
                let [ih, iw] = header(path)?;
                let out = self
                    .transform
                    .output_dims(ih, iw)
                    .map_err(|e| image_error(path, e))?;
                match out == [h, w] {
                    true => Ok(is_large_image(ih, iw).then(|| path.to_path_buf())),
                    false => Err(self.size_error(path, [ih, iw], out)),
                }
            })
            .collect::<Result<Vec<Option<PathBuf>>>>()?;
        Ok(large.into_iter().flatten().collect())
    }

    /// An `input` (`[H, W]`) image at `path` that comes out `output`, not the folder's size.
    fn size_error(&self, path: &Path, [ih, iw]: [usize; 2], [oh, ow]: [usize; 2]) -> Error {
        let [_, h, w] = self.dims;
        image_error(
            path,
            format!(
                "{ih}x{iw} image gives {oh}x{ow}, but {} gives {h}x{w}: every image must come out the same size (crop them)",
                self.files[0].display()
            ),
        )
    }

    fn path(&self, index: usize) -> Result<&Path> {
        self.files.get(index).map(PathBuf::as_path).ok_or_else(|| {
            Error::invalid(
                "image index",
                format!("{index} is past the {} images", self.files.len()),
            )
        })
    }

    /// The class names, sorted: label `i` is `classes()[i]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Every image file, in index order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.files
    }

    /// The label of every image (none for a folder without class sub-folders).
    pub fn labels(&self) -> IdxLabels {
        IdxLabels::from_vec(self.labels.clone())
    }

    /// The images with their labels. Fails for a folder without class sub-folders.
    pub fn into_dataset(self) -> Result<Dataset<ImageFolder>> {
        if !self.is_labelled() {
            return Err(image_error(
                &self.files[0],
                "this image lies in a folder without class sub-folders: no labels to make a data set with",
            ));
        }
        let labels = self.labels();
        Dataset::new(self, labels)
    }

    /// Image `index` decoded, converted and transformed.
    pub fn pixels(&self, index: usize) -> Result<Pixels> {
        let path = self.path(index)?;
        let image = read_image(path, self.dims[0])?;
        let decoded_dims = image.dims();
        let out = self.transform.apply(&image)?;
        let [_, oh, ow] = out.dims();
        if [oh, ow] != [self.dims[1], self.dims[2]] {
            let [_, ih, iw] = decoded_dims;
            return Err(self.size_error(path, [ih, iw], [oh, ow]));
        }
        Ok(out)
    }
}

impl ImageSource for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn image_dims(&self) -> [usize; 3] {
        self.dims
    }

    fn check(&self, indices: &[usize]) -> Result<()> {
        ImageFolder::check(self, indices).map(drop)
    }

    fn tensor(&self, indices: &[usize], norm: &Normalization) -> Result<Tensor4> {
        let [c, h, w] = self.dims;
        norm.check_channels(c)?;
        // Each image decoded and normalised straight into its place, in parallel.
        let mut data = vec![0.0; indices.len() * c * h * w];
        data.par_chunks_mut((c * h * w).max(1))
            .zip(indices.par_iter())
            .try_for_each(|(out, &i)| {
                norm.normalize_into(self.pixels(i)?.as_slice(), h * w, out);
                Ok::<_, Error>(())
            })?;
        Ok(Array4::from_shape_vec((indices.len(), c, h, w), data).expect("sizes checked"))
    }
}
