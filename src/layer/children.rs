//! Declaring a network's children once: the [`params!`](crate::params) macro writes
//! both walks of [`Params`](super::Params) from one list of fields.

/// Implements [`Params`](crate::layer::Params) for a struct whose parameters are in
/// fields that are themselves `Params`, each named once: the field's name, or the
/// name after `as` (torchvision's `"0"`, or `""` for a child walked at the struct's
/// own level). Both walks, [`Params::visit`](crate::layer::Params::visit) and
/// [`Params::visit_mut`](crate::layer::Params::visit_mut), visit the children in the
/// order given.
///
/// ```
/// use reflow::layer::{count_parameters, Params};
/// use reflow::nn::{BatchNorm2d, Conv2d, Conv2dConfig};
///
/// struct Stem {
///     conv: Conv2d,
///     norm: BatchNorm2d,
/// }
/// reflow::params!(Stem { conv as "0", norm as "1" });
///
/// struct Net {
///     stem: Stem,
///     head: Conv2d,
/// }
/// reflow::params!(Net { stem, head });
///
/// let net = Net {
///     stem: Stem {
///         conv: Conv2d::new(Conv2dConfig::new(3, 8, 3))?,
///         norm: BatchNorm2d::new(8, 1e-5),
///     },
///     head: Conv2d::new(Conv2dConfig::new(8, 4, 1).bias(true))?,
/// };
/// let mut names = Vec::new();
/// net.visit_params(&mut |p| names.push(p.name.to_string()));
/// assert_eq!(names[..2], ["stem.0.weight", "stem.1.weight"]);
/// assert_eq!(names[names.len() - 2..], ["head.weight", "head.bias"]);
/// assert_eq!(count_parameters(&net), 3 * 8 * 9 + 2 * 8 + 8 * 4 + 4);
/// # Ok::<(), reflow::Error>(())
/// ```
#[macro_export]
macro_rules! params {
    (@name $field:ident $name:literal) => {
        $name
    };
    (@name $field:ident) => {
        stringify!($field)
    };
    ($ty:ty { $($field:ident $(as $name:literal)?),* $(,)? }) => {
        impl $crate::layer::Params for $ty {
            fn visit(&self, v: &mut $crate::layer::Visitor<'_>) {
                $( v.child($crate::params!(@name $field $($name)?), &self.$field); )*
            }

            fn visit_mut(&mut self, v: &mut $crate::layer::VisitorMut<'_>) {
                $( v.child($crate::params!(@name $field $($name)?), &mut self.$field); )*
            }
        }
    };
}
