"""The bundled model as the app uses it: served by the real local stack (Triton behind Envoy),
driven by the client engine with its default preprocessing, labels from the server."""

from __future__ import annotations

from flowerdemo.core.engine import EngineSettings, InferenceEngine
from flowerdemo.core.events import InferenceEvent
from flowerdemo.core.images import load_images, read_labels
from flowerdemo.resources import labels_file, sample_images_dir


async def test_the_served_model_names_the_bundled_samples(local_stack):
    samples = load_images(sample_images_dir()).images
    names = read_labels(labels_file())
    engine = InferenceEngine(
        EngineSettings(url=local_stack.grpc_url, topk=3), [s.image for s in samples]
    )
    spec = await engine.connect()
    events: list[InferenceEvent] = []
    engine.add_sink(events.append)
    try:
        assert spec.has_labels, "the served model must attach labels (label_filename)"
        await engine.run_automatic(8, max_requests=len(samples))
    finally:
        await engine.close()

    assert len(events) == len(samples) and all(event.ok for event in events)
    best = {event.image_indices[0]: event.topk[0][0] for event in events}
    assert sorted(best) == list(range(len(samples)))
    correct = [k for k, guess in best.items() if guess.index == samples[k].truth]
    wrong = [(samples[k].name, best[k].label) for k in best if k not in correct]
    assert len(correct) / len(samples) >= 0.90, f"wrong: {wrong}"
    # The label the server attached is the name of the class it chose.
    assert all(guess.label == names[guess.index] for guess in best.values())
