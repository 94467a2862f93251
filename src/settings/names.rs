//! Enums whose names are written once: [`named_enum!`] declares the enum and, from its one list of names
//! and aliases, derives `name()`, `parse()`, `Display`, serde (a plain string, an unknown one refused with
//! serde's own "unknown variant" message) and, with the `cli` feature, clap's `ValueEnum`.

/// Declares an enum whose variants are named by string literals, aliases after `|`:
///
/// ```text
/// named_enum! {
///     /// Weights and compute precision of a conversion.
///     #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
///     pub enum Precision {
///         Fp32 = "fp32" | "float32",
///         Fp16 = "fp16" | "float16",
///     }
/// }
/// ```
///
/// Reading ignores ASCII case; writing uses the first name.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $text:literal $(| $alias:literal)*
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The name of every variant, in declaration order (aliases left out).
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name the command line, profiles and manifests use.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Other spellings that are read as this variant.
            pub fn aliases(self) -> &'static [&'static str] {
                match self {
                    $($name::$variant => &[$($alias),*],)+
                }
            }

            /// The variant named `text` (or one of its aliases), ASCII case ignored.
            pub fn parse(text: &str) -> Option<Self> {
                let text = text.trim();
                Self::ALL.iter().copied().find(|v| {
                    v.name().eq_ignore_ascii_case(text) || v.aliases().iter().any(|a| a.eq_ignore_ascii_case(text))
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).ok_or_else(|| serde::de::Error::unknown_variant(&text, Self::NAMES))
            }
        }

        #[cfg(feature = "cli")]
        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                Self::ALL
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()).aliases(self.aliases().iter().copied()))
            }
        }
    };
}

pub(crate) use named_enum;

/// `a, b or c` (`word` = "or"), for sentences that list names.
pub(crate) fn list(names: &[&str], word: &str) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} {word} {last}", init.join(", ")),
    }
}
