"""One customer journey with a client generated from the public OpenAPI document.

Run by e2e/tests/api_contract.rs after `openapi-python-client generate` wrote the package
`shop_client` into a scratch directory on PYTHONPATH: everything below uses only what the
generator made from the document (operations by operationId, models by schema name), so it
fails when the document stops describing what the system does.

Environment: SHOP_BASE_URL (the gateway), SHOP_MAILDEV_URL (the mail catcher's API),
SHOP_FORWARDED_FOR (this client's address for the gateway's rate limits),
SHOP_PRODUCT_CATEGORY (a category with a product in stock), SHOP_CARD (an approving test card).
"""

import json
import os
import sys
import time
import urllib.parse
import urllib.request
import uuid

from shop_client import AuthenticatedClient, Client
from shop_client.api.catalog import list_products
from shop_client.api.notification import list_notifications
from shop_client.api.order import get_order, place_order
from shop_client.api.payment import list_payments
from shop_client.api.user import login, me, register
from shop_client.models import (
    LoginRequest,
    NewOrder,
    NewOrderItemsItem,
    NewOrderPayment,
    OrderStatus,
    RegisterRequest,
    ShippingAddress,
)

PATIENCE = 60  # seconds for the saga and the email


def expect(condition, what):
    if not condition:
        sys.exit(f"journey: {what}")
    print(f"journey: {what}: ok")


def eventually(what, probe):
    deadline = time.monotonic() + PATIENCE
    while True:
        value = probe()
        if value:
            print(f"journey: {what}: ok")
            return value
        if time.monotonic() > deadline:
            sys.exit(f"journey: {what}: not within {PATIENCE} s")
        time.sleep(0.2)


base = os.environ["SHOP_BASE_URL"]
headers = {"X-Forwarded-For": os.environ["SHOP_FORWARDED_FOR"]}
anonymous = Client(base_url=base, headers=headers, raise_on_unexpected_status=True)

email = f"python-{uuid.uuid4().hex[:12]}@example.com"
password = "correct horse battery staple"
created = register.sync_detailed(
    client=anonymous, body=RegisterRequest(email=email, password=password, name="Py Thon")
)
expect(created.status_code == 201, "register answers 201")

tokens = login.sync(client=anonymous, body=LoginRequest(email=email, password=password))
expect(tokens is not None and tokens.token_type == "Bearer", "login answers a bearer token")
customer = AuthenticatedClient(
    base_url=base, token=tokens.access_token, headers=headers, raise_on_unexpected_status=True
)
account = me.sync(client=customer)
expect(account.email == email, "the token is the new customer's")

page = list_products.sync(client=anonymous, category=os.environ["SHOP_PRODUCT_CATEGORY"])
expect(len(page.items) == 1 and page.items[0].in_stock, "browsing finds the product in stock")
product = page.items[0]

order = place_order.sync(
    client=customer,
    idempotency_key=str(uuid.uuid4()),
    body=NewOrder(
        items=[NewOrderItemsItem(product_id=product.id, quantity=2)],
        payment=NewOrderPayment(card_number=os.environ["SHOP_CARD"], expiry="12/30", cvc="123"),
        shipping_address=ShippingAddress(
            name="Py Thon", line1="1 Main St", city="Berlin", postal_code="10115", country="DE"
        ),
    ),
)
expect(order.status == OrderStatus.PENDING, "the order is accepted as PENDING")
expect(order.total.amount == 2 * product.price.amount, "the total is catalog's price")

confirmed = eventually(
    "the order becomes CONFIRMED",
    lambda: (lambda o: o if o.status == OrderStatus.CONFIRMED else None)(
        get_order.sync(client=customer, id=str(order.id))
    ),
)
expect(confirmed.items[0].product.name == product.name, "the composed order names the product")

payments = list_payments.sync(client=customer, order_id=order.id)
expect(
    len(payments.items) == 1
    and payments.items[0].captured.amount == order.total.amount
    and payments.items[0].card.last4 == os.environ["SHOP_CARD"][-4:],
    "the payment is captured, the card shown as its last four digits",
)

eventually(
    "the confirmation is listed among the notifications",
    lambda: any(
        n.template == "order_confirmed"
        for n in list_notifications.sync(client=customer).items
    ),
)
maildev = os.environ["SHOP_MAILDEV_URL"]


def mails():
    url = f"{maildev}/email?" + urllib.parse.urlencode({"to.address": email})
    with urllib.request.urlopen(url) as answer:
        return [m for m in json.load(answer) if str(order.id) in (m.get("text") or "")]


eventually("the confirmation email arrived", mails)
print("journey: done")
