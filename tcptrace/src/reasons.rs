//! Names of the kernel's reset reasons (`enum sk_rst_reason`, include/net/rstreason.h,
//! since 6.10), read from the running kernel's BTF. The enum is renumbered between
//! releases (MPTCP reasons were inserted in the middle), so a built-in table
//! would print wrong names; a value the table lacks prints as its number.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

const ENUM_NAME: &str = "sk_rst_reason";
const PREFIX: &str = "SK_RST_REASON_";

/// Reset reason value -> name, without the `SK_RST_REASON_` prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResetReasons {
    names: BTreeMap<u32, String>,
}

impl ResetReasons {
    /// Reads `enum sk_rst_reason` from a BTF file such as /sys/kernel/btf/vmlinux.
    /// An empty table (kernel < 6.10) is not an error: reasons print as numbers.
    pub fn from_btf_file(path: &Path) -> Result<Self> {
        let btf = btf_rs::Btf::from_file(path)
            .with_context(|| format!("read BTF from {}", path.display()))?;
        let mut names = BTreeMap::new();
        for ty in btf.resolve_types_by_name(ENUM_NAME).unwrap_or_default() {
            let btf_rs::Type::Enum(en) = ty else {
                continue;
            };
            for member in &en.members {
                let name = btf.resolve_name(member).context("read enum member name")?;
                names.insert(
                    member.val(),
                    name.strip_prefix(PREFIX).unwrap_or(&name).to_string(),
                );
            }
        }
        Ok(Self { names })
    }

    /// Builds a table from (value, name) pairs; names may carry the prefix.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (u32, &'a str)>) -> Self {
        let names = pairs
            .into_iter()
            .map(|(v, n)| (v, n.strip_prefix(PREFIX).unwrap_or(n).to_string()))
            .collect();
        Self { names }
    }

    pub fn name(&self, value: u32) -> Cow<'_, str> {
        match self.names.get(&value) {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(value.to_string()),
        }
    }

    /// Looks a reason up by name (with or without the prefix, any case).
    pub fn value(&self, name: &str) -> Result<u32> {
        let up = name.to_ascii_uppercase();
        let want = up.strip_prefix(PREFIX).unwrap_or(&up);
        match self.names.iter().find(|(_, n)| *n == want) {
            Some((v, _)) => Ok(*v),
            None => bail!("unknown reset reason '{name}'"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.names.iter().map(|(v, n)| (*v, n.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_table_and_unknown_values_print_as_numbers() {
        let r =
            ResetReasons::from_pairs([(1, "SK_RST_REASON_NO_SOCKET"), (11, "TCP_ABORT_ON_CLOSE")]);
        assert_eq!(r.name(1), "NO_SOCKET");
        assert_eq!(r.name(11), "TCP_ABORT_ON_CLOSE");
        assert_eq!(r.name(77), "77");
        assert_eq!(r.value("no_socket").unwrap(), 1);
        assert_eq!(r.value("SK_RST_REASON_TCP_ABORT_ON_CLOSE").unwrap(), 11);
        assert!(r.value("bogus").is_err());
    }

    #[test]
    fn reads_the_running_kernels_enum() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let r = ResetReasons::from_btf_file(path).unwrap();
        // Present since 6.10; the machine this project is built on runs 6.18.
        let no_socket = r.value("NO_SOCKET").unwrap();
        assert_eq!(r.name(no_socket), "NO_SOCKET");
        assert!(r.value("TCP_ABORT_ON_CLOSE").is_ok());
    }
}
