use lock_guard::concurrency_guard;

#[concurrency_guard(name = "orders")]
async fn place(order: u64) -> Option<u64> {
    Some(order)
}

fn main() {}
