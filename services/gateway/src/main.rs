/// The gateway allocates with mimalloc, not the C library's malloc (ADR 0019).
///
/// Why: forwarding a request allocates many small, short-lived objects (headers, the span,
/// futures, buffers), often freed on another worker thread than the one that allocated them.
/// `make bench`'s profile found a quarter of the gateway's CPU inside glibc's malloc and free,
/// and hand A/B runs saw its cost per request jump by up to a third from one window to the
/// next; mimalloc frees across threads without a lock. The binary declares it, not the library: tests run the gateway in-process beside
/// other services, and the other services keep glibc's allocator (the ADR says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shop_runtime::run::<gateway::Gateway>()
}
