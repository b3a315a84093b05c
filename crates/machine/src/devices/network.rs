//! User-mode networking (slirp) on a `virtio-net-pci` card, with host port forwards. The
//! host port QEMU picked for a forward is read from the running machine in
//! [`usernet`](crate::usernet).

/// A port forward from the host to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Forward {
    udp: bool,
    address: std::net::Ipv4Addr,
    host_port: u16,
    guest_port: u16,
}

/// User-mode networking (slirp: the guest is 10.0.2.15, no privileges needed) on a
/// `virtio-net-pci` card, with port forwards on the host's 127.0.0.1 (or another address
/// when asked).
///
/// ```
/// let net = qemu_machine::devices::UserNet::new().forward_tcp(0, 22).forward_udp(5353, 53);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserNet {
    forwards: Vec<Forward>,
}

impl UserNet {
    /// No forwards yet.
    ///
    /// ```
    /// let net = qemu_machine::devices::UserNet::new();
    /// ```
    pub fn new() -> UserNet {
        UserNet::default()
    }

    /// Forwards TCP `127.0.0.1:host_port` to the guest's `guest_port`; host port 0 picks
    /// a free one (read it after launch with [`Machine::host_port`](crate::Machine::host_port)).
    ///
    /// ```
    /// let net = qemu_machine::devices::UserNet::new().forward_tcp(0, 8080);
    /// ```
    pub fn forward_tcp(self, host_port: u16, guest_port: u16) -> UserNet {
        self.forward_tcp_on(std::net::Ipv4Addr::LOCALHOST, host_port, guest_port)
    }

    /// Forwards TCP `address:host_port` to the guest's `guest_port`: another host
    /// address than 127.0.0.1 (`0.0.0.0` is every interface: the guest's port is then open
    /// to the network).
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// let net = qemu_machine::devices::UserNet::new().forward_tcp_on(Ipv4Addr::UNSPECIFIED, 8080, 80);
    /// ```
    pub fn forward_tcp_on(
        self,
        address: std::net::Ipv4Addr,
        host_port: u16,
        guest_port: u16,
    ) -> UserNet {
        self.forward(Forward {
            udp: false,
            address,
            host_port,
            guest_port,
        })
    }

    /// Forwards UDP `127.0.0.1:host_port` to the guest's `guest_port`.
    ///
    /// ```
    /// let net = qemu_machine::devices::UserNet::new().forward_udp(5353, 53);
    /// ```
    pub fn forward_udp(self, host_port: u16, guest_port: u16) -> UserNet {
        self.forward_udp_on(std::net::Ipv4Addr::LOCALHOST, host_port, guest_port)
    }

    /// Forwards UDP `address:host_port` to the guest's `guest_port` (see
    /// [`forward_tcp_on`](Self::forward_tcp_on)).
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// let net = qemu_machine::devices::UserNet::new().forward_udp_on(Ipv4Addr::LOCALHOST, 5353, 53);
    /// ```
    pub fn forward_udp_on(
        self,
        address: std::net::Ipv4Addr,
        host_port: u16,
        guest_port: u16,
    ) -> UserNet {
        self.forward(Forward {
            udp: true,
            address,
            host_port,
            guest_port,
        })
    }
}

impl UserNet {
    /// Adds `forward`.
    fn forward(mut self, forward: Forward) -> UserNet {
        self.forwards.push(forward);
        self
    }

    /// The `-netdev` and `-device` of the `i`th network.
    pub(super) fn args(&self, i: usize) -> Vec<String> {
        let mut netdev = format!("user,id=qm-net{i}");
        for forward in &self.forwards {
            netdev.push_str(&format!(
                ",hostfwd={}:{}:{}-:{}",
                if forward.udp { "udp" } else { "tcp" },
                forward.address,
                forward.host_port,
                forward.guest_port
            ));
        }
        vec![
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("virtio-net-pci,netdev=qm-net{i}"),
        ]
    }
}
