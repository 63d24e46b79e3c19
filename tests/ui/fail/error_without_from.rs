use lock_guard::concurrency_guard;

#[derive(Debug)]
struct AppError;

#[concurrency_guard(name = "orders")]
async fn place(order: u64) -> Result<u64, AppError> {
    Ok(order)
}

fn main() {}
