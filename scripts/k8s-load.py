#!/usr/bin/env python3
"""A light, steady load for scripts/k8s-test.sh's upgrade: GET requests at a fixed rate, a new
TCP connection each (so each is balanced anew over the ready pods, as new clients are), until
a stop file appears; then a JSON report {sent, failed, failures}. A request fails when it gets
no answer within the timeout or a status other than 200.

Each request carries X-Forwarded-For from a pool of addresses: the test's gateway trusts it (as
behind a load balancer), so the load is many clients, none of them near the per-address limit.
Standard library only.
"""

import argparse
import json
import os
import threading
import time
import urllib.error
import urllib.request


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", action="append", required=True, help="repeat: requests cycle through them")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()

    lock = threading.Lock()
    result = {"sent": 0, "failed": 0, "failures": []}

    def one(n):
        url = args.url[n % len(args.url)]
        request = urllib.request.Request(url, headers={"X-Forwarded-For": f"10.99.{n % 200 // 100}.{n % 100 + 1}"})
        error = None
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as response:
                response.read()
                if response.status != 200:
                    error = f"{url}: HTTP {response.status}"
        except urllib.error.HTTPError as e:
            error = f"{url}: HTTP {e.code}"
        except Exception as e:  # connection refused/reset, timeout: all count as failures
            error = f"{url}: {type(e).__name__}: {e}"
        with lock:
            result["sent"] += 1
            if error:
                result["failed"] += 1
                if len(result["failures"]) < 20:
                    result["failures"].append(f"{time.strftime('%H:%M:%S')} {error}")

    threads = []
    n = 0
    start = time.monotonic()
    while not os.path.exists(args.stop_file):
        thread = threading.Thread(target=one, args=(n,))
        thread.start()
        threads.append(thread)
        n += 1
        time.sleep(max(0.0, start + n / args.rate - time.monotonic()))
    for thread in threads:
        thread.join()
    with open(args.report, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
