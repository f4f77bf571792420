// Resolves names the way std (and tokio::net::lookup_host, which calls std on a blocking thread) does: through
// glibc's getaddrinfo. cross/check.sh builds this with the same static-glibc settings as `outpost` and runs it under
// qemu, to show that `localhost` (and /etc/hosts entries) resolve in a static binary. Exit code 1 if any fails.
use std::net::ToSocketAddrs;

fn main() {
    let mut failed = false;
    for name in std::env::args().skip(1) {
        match (name.as_str(), 1883).to_socket_addrs() {
            Ok(addrs) => println!("{name}: {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => {
                println!("{name}: error: {e}");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
