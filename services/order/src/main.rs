fn main() -> std::process::ExitCode {
    shop_runtime::run::<order_service::OrderService>()
}
