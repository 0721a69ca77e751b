"""The shared decoding controls (`ui.controls`): presets and how the sampler sliders become request
fields (pure functions; the components are driven in a browser by the UI tests)."""

import gradio as gr

from ui.controls import CUSTOM, PRESETS, preset_values, sampler_fields


def test_presets_set_every_sampler_slider():
    assert preset_values("greedy (T=0)")[0] == 0.0
    assert all(len(values) == 7 for values in PRESETS.values())
    assert preset_values(CUSTOM) == [gr.skip()] * 7


def test_sliders_at_off_leave_the_stages_defaults():
    assert sampler_fields() == {"presence_penalty": 0.0, "frequency_penalty": 0.0}
    assert sampler_fields(5, 0.1, 1.2, 0.3, 0.5) == {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.5,
    }
