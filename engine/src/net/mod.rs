//! Sockets and the network: one module per socket family (unix, inet with
//! TCP repair, netlink, packet), the options every socket has (`sk_opts`)
//! and the nftables lock that keeps a peer from seeing a reset while
//! connections are dumped (`netlock`).

pub(crate) mod inet;
pub(crate) mod netlink_sk;
pub(crate) mod netlock;
pub(crate) mod packet;
pub(crate) mod sk_opts;
pub(crate) mod tcp;
pub(crate) mod tun;
pub(crate) mod unix;
