//! Where a node can be reached: its id plus socket addresses.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::identity::NodeId;

/// A node's id and the socket addresses it can be reached at.
///
/// Text form: `NODEID@IP:PORT[,IP:PORT...]` (what `butter node` prints).
///
/// ```
/// use butter::NodeAddr;
/// let a: NodeAddr = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29@127.0.0.1:7400,[::1]:7400".parse()?;
/// assert_eq!(a.addrs.len(), 2);
/// assert_eq!(a.to_string().parse::<NodeAddr>()?, a);
/// # Ok::<(), butter::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Who.
    pub id: NodeId,
    /// Where, in order of preference.
    pub addrs: Vec<SocketAddr>,
}

impl NodeAddr {
    /// A node at the given addresses.
    pub fn new(id: NodeId, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        NodeAddr {
            id,
            addrs: addrs.into_iter().collect(),
        }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@", self.id)?;
        for (i, a) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl FromStr for NodeAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (id, addrs) = s.trim().split_once('@').ok_or_else(|| {
            Error::InvalidArgument(format!("expected NODEID@IP:PORT[,IP:PORT...], got {s:?}"))
        })?;
        if addrs.split(',').any(|a| a.trim().is_empty()) && !addrs.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "an empty address in the list {s:?}"
            )));
        }
        let addrs = addrs
            .split(',')
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|e| Error::InvalidArgument(format!("bad socket address {a:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(Error::InvalidArgument(format!("no address in {s:?}")));
        }
        Ok(NodeAddr {
            id: id.parse()?,
            addrs,
        })
    }
}

/// Whom to call: a full address, or a NodeId the node already knows how to reach
/// (a live connection, or addresses learned earlier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// By id alone.
    Id(NodeId),
    /// By id and addresses.
    Addr(NodeAddr),
}

impl Target {
    /// The node being called.
    pub fn id(&self) -> NodeId {
        match self {
            Target::Id(id) => *id,
            Target::Addr(a) => a.id,
        }
    }
}

impl From<NodeId> for Target {
    fn from(id: NodeId) -> Self {
        Target::Id(id)
    }
}
impl From<&NodeId> for Target {
    fn from(id: &NodeId) -> Self {
        Target::Id(*id)
    }
}
impl From<NodeAddr> for Target {
    fn from(a: NodeAddr) -> Self {
        Target::Addr(a)
    }
}
impl From<&NodeAddr> for Target {
    fn from(a: &NodeAddr) -> Self {
        Target::Addr(a.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_addresses_are_invalid_arguments() {
        let id = "ab".repeat(32);
        for s in [
            &format!("{id}@1.2.3.4:5,,"),
            &format!("{id}@1.2.3.4:5,"),
            &format!("{id}@,1.2.3.4:5"),
            "",
            "abc",
            "@127.0.0.1:1",
            "zz@127.0.0.1:1",
            &format!("{}@", "ab".repeat(32)),
            &format!("{}@nope", "ab".repeat(32)),
        ] {
            assert!(
                matches!(s.parse::<NodeAddr>(), Err(Error::InvalidArgument(_))),
                "{s}"
            );
        }
    }
}
