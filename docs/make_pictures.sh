#!/usr/bin/env bash
# The documentation's pictures, made by the commands its pages give: bash docs/make_pictures.sh [NAME...]
# NAMES: curves confusion graph gradients tuning tensorboard site (default: all). Runs go to a scratch directory; only the
# pictures land in docs/images/. Needs the test extra (tensorboard, optuna) and, for tensorboard, headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
images=docs/images
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
wanted=("${@:-curves confusion graph gradients tuning tensorboard site}")
wants() { [[ " ${wanted[*]} " == *" $1 "* ]]; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if wants curves || wants confusion; then  # the quick start: learning curves, then eval's confusion matrix
    dltrain train configs/quickstart.yaml --run-dir "$scratch/quickstart" -q
    cp "$scratch/quickstart/curves.png" "$images/curves.png"
    dltrain eval "$scratch/quickstart" --plots --plots-dir "$scratch/plots" > /dev/null
    cp "$scratch/plots/confusion_matrix-test.png" "$images/confusion_matrix.png"
fi

if wants graph; then  # the tutorial's Linear-ReLU-Linear-Softmax model (slides 29-45) and its backward pass
    printf 'data: {name: blobs, n_samples: 100, classes: 3}\nmodel: [{linear: {units: 5}}, relu, {linear: {units: 3}}, softmax]\n' \
        > "$scratch/tutorial.yaml"
    dltrain graph "$scratch/tutorial.yaml" --backward --ops --out "$images/tutorial_graph.png"
fi

if wants gradients; then  # the vanishing gradient (slides 65-66): 20 sigmoid layers against 20 ReLU + batchnorm
    for config in vanishing_sigmoid deep_relu_bn; do
        dltrain train "configs/$config.yaml" --run-dir "$scratch/$config" -q
        dltrain plot "$scratch/$config" --gradients --out "$images/${config}_gradients.png"
    done
fi

if wants tuning; then  # an Optuna study's history: the shipped search around fashion_mlp, 10 epochs a trial
    dltrain tune configs/fashion_mlp.yaml --space configs/search/fashion_mlp.yaml --set training.epochs=10 \
        --dir "$scratch/study"
    cp "$scratch/study/history.png" "$images/tune-history.png"
fi

# Two quick-start runs in TensorBoard, as a browser shows them. Look at the picture: the Chromium 14x of Debian 12
# draws the charts' axes and tables but not their lines (WebGL in a worker); docs/images/tensorboard.png was taken
# with one that drew them.
if wants tensorboard; then
    for lr in 0.01 0.002; do
        dltrain train configs/quickstart.yaml --run-dir "$scratch/tb/lr-$lr" -q \
            --set "training.loggers=[tensorboard]" --set "optimizer.lr=$lr"
    done
    port=$(free_port)
    tensorboard --logdir "$scratch/tb" --port "$port" --host 127.0.0.1 > "$scratch/tensorboard.log" 2>&1 &
    server=$!
    for _ in $(seq 60); do  # until TensorBoard has read every event file (its first pass takes a while)
        runs=$(python3 -c "import json, urllib.request; print(len(json.load(urllib.request.urlopen('http://127.0.0.1:$port/data/runs'))))" 2>/dev/null || echo 0)
        [ "$runs" -ge 6 ] && break
        sleep 1
    done
    sleep 5
    chromium --headless --no-sandbox --use-angle=swiftshader --enable-unsafe-swiftshader --hide-scrollbars --window-size=1500,1100 \
        --virtual-time-budget=20000 --screenshot="$images/tensorboard.png" \
        "http://127.0.0.1:$port/#timeseries" > /dev/null 2>&1
    kill "$server"
fi
if wants site; then  # two pages of this site as a browser shows them (headless Chromium)
    NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$scratch/site"
    port=$(free_port)
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$scratch/site" > /dev/null 2>&1 &
    server=$!
    sleep 1
    for page in getting-started reference/layers; do
        chromium --headless --no-sandbox --hide-scrollbars --window-size=1400,1000 --virtual-time-budget=5000 \
            --screenshot="$images/site-$(basename "$page").png" "http://127.0.0.1:$port/$page/" > /dev/null 2>&1
    done
    kill "$server"
fi
ls -l "$images"
