use lock_guard::concurrency_guard;

#[concurrency_guard(name = "orders")]
struct Orders;

fn main() {}
