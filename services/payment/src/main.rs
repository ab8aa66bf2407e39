fn main() -> std::process::ExitCode {
    shop_runtime::run::<payment_service::PaymentService>()
}
