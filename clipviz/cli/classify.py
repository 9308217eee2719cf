"""``clipviz classify``: zero-shot probabilities of the prompts for each image (clipviz.zeroshot)."""

import json
import sys

from .inputs import check_prompts, load_model, model_name, split_inputs
from .policy import each_image, one_line, report_failures


def run(args):
    images, prompts = split_inputs(args.inputs, args.image, args.images, args.prompt)
    name = model_name(args.model)
    check_prompts(prompts, args.model)
    model = load_model(name, args.device, args.activation, prompts)
    from ..zeroshot import classify

    results = []

    def one(index, image):
        result = classify(model, image, prompts)
        if args.json:
            results.append(result.to_dict())
        else:
            print(f"{one_line(image)}\n" + "\n".join(f"  {prob:7.2%}  {one_line(prompt)}"
                                                     for prompt, prob in result.ranked()))

    failures = each_image(images, one)
    if args.json:
        json.dump({"model": name, "results": results,
                   "failures": [{"image": i, "error": e} for i, e in failures]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return report_failures(failures, len(images))
