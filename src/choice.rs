//! Named choices: an enum whose values a user picks by name (on the command line, in an
//! experiment file, in results). Each lists its values and their names once, with
//! [`choices!`](crate::choices); parsing (in any case), display, serde (experiment files, results)
//! and the command line's list of possible values all come from that list.

/// An enum of named values.
pub trait Choice: Sized + Copy + PartialEq + 'static {
    /// Every value, in the order a user sees them listed.
    const ALL: &'static [Self];
    /// The value's name, as typed by a user and written in results.
    fn name(self) -> &'static str;

    /// The value of a name, in any case (`Linf` is `linf`), or an error listing the names.
    fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
            anyhow::anyhow!("'{s}' is not one of {}", names.join(", "))
        })
    }

    /// Every name.
    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.name()).collect()
    }
}

/// Implements [`Choice`], `Display` and `FromStr` for an enum from its list of values and names:
/// `choices!(Norm { Linf = "linf", L2 = "l2" });`
#[macro_export]
macro_rules! choices {
    ($t:ident { $($v:ident = $n:literal),+ $(,)? }) => {
        impl $crate::choice::Choice for $t {
            const ALL: &'static [Self] = &[$($t::$v),+];
            fn name(self) -> &'static str {
                match self {
                    $($t::$v => $n),+
                }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::choice::Choice::name(*self))
            }
        }
        impl std::str::FromStr for $t {
            type Err = anyhow::Error;
            fn from_str(s: &str) -> anyhow::Result<Self> {
                <$t as $crate::choice::Choice>::parse(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($crate::choice::Choice::name(*self))
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                <$t as $crate::choice::Choice>::parse(&name).map_err(serde::de::Error::custom)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Choice;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fruit {
        Apple,
        Pear,
    }
    crate::choices!(Fruit { Apple = "apple", Pear = "pear" });

    #[test]
    fn names_parse_and_display() {
        assert_eq!("pear".parse::<Fruit>().unwrap(), Fruit::Pear);
        assert_eq!("PEAR".parse::<Fruit>().unwrap(), Fruit::Pear, "any case");
        assert_eq!(" Apple ".parse::<Fruit>().unwrap(), Fruit::Apple);
        assert_eq!(Fruit::Apple.to_string(), "apple");
        let err = "plum".parse::<Fruit>().unwrap_err().to_string();
        assert!(err.contains("'plum'") && err.contains("apple, pear"), "{err}");
        assert_eq!(Fruit::names(), ["apple", "pear"]);
    }

    #[test]
    fn serde_uses_the_names_in_any_case() {
        #[derive(serde::Deserialize)]
        struct Basket {
            fruit: Fruit,
        }
        assert_eq!(serde_json::to_string(&Fruit::Pear).unwrap(), "\"pear\"");
        assert_eq!(toml::from_str::<Basket>("fruit = \"Apple\"").unwrap().fruit, Fruit::Apple);
        let err = toml::from_str::<Basket>("\n\nfruit = \"plum\"").err().unwrap().to_string();
        assert!(err.contains("line 3") && err.contains("'plum' is not one of apple, pear"), "{err}");
    }
}
