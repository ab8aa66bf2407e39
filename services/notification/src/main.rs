fn main() -> std::process::ExitCode {
    shop_runtime::run::<notification_service::NotificationService>()
}
