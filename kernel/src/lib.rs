//! Kernel interfaces shared by the engine (`stasis-engine`) and the feature
//! probes (`stasis-check`), one module per interface: [`netlink`] (the
//! message builder, the socket, nf_tables transactions), [`nftables`] (a
//! namespace's ruleset, saved and made again) and [`rtnl`] (route
//! netlink: links, addresses, routes, and iproute2's save format).

pub mod netlink;
pub mod nftables;
pub mod rtnl;
