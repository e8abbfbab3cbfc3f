//! The names of the small enums the command line and the reports spell out (a scope,
//! a stem, a repair), written once per enum by [`names!`].

/// Declares a small enum with the name of each variant beside it: the enum (its
/// attributes and documentation as written), `name()`, `Display` (the name) and
/// `FromStr` (from the name; any other text is
/// [`Error::UnknownName`](crate::Error::UnknownName) naming the parameter `$what` and
/// the names taken, `$expected`).
macro_rules! names {
    (
        $(#[$meta:meta])*
        $vis:vis enum $ty:ident as $what:literal, expecting $expected:literal {
            $($(#[$vmeta:meta])* $variant:ident = $name:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $ty {
            $($(#[$vmeta])* $variant),+
        }

        impl $ty {
            /// The name it is written as, and parsed from.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::Error;

            fn from_str(text: &str) -> $crate::error::Result<Self> {
                match text {
                    $($name => Ok($ty::$variant),)+
                    other => Err($crate::Error::unknown($what, other, $expected)),
                }
            }
        }
    };
}
pub(crate) use names;
