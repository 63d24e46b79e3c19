use lock_guard::concurrency_guard;

#[concurrency_guard(name = "orders")]
async fn place(order: u64) {
    let _ = order;
}

fn main() {}
