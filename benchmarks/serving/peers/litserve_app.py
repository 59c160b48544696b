"""LitServe: one CPU worker, POST /predict. echo passes the body through; embed uses
LitServe's dynamic batching (max_batch_size, batch_timeout)."""

import argparse

import common
import litserve as ls


class Echo(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request

    def predict(self, x):
        return x

    def encode_response(self, output):
        return output


class Embed(ls.LitAPI):
    def setup(self, device):
        self.model = common.load()

    def decode_request(self, request):
        return request["sentences"]

    def batch(self, inputs):
        self.sizes = [len(x) for x in inputs]
        return [s for x in inputs for s in x]

    def predict(self, sentences):
        return common.encode(self.model, sentences).tolist()

    def unbatch(self, output):
        parts, start = [], 0
        for n in self.sizes:
            parts.append(output[start:start + n])
            start += n
        return parts

    def encode_response(self, output):
        return {"embeddings": output}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workload", required=True)
    a = ap.parse_args()
    api = Echo() if a.workload == "echo" else Embed(max_batch_size=common.MAX_BATCH,
                                                    batch_timeout=common.BATCH_WAIT_S)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        host="127.0.0.1", port=a.port, log_level="warning", generate_client_file=False)
