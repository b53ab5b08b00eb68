"""Knowledge-distillation models: students trained to match a frozen teacher on normals; the anomaly map is
where they disagree (STFPM, Reverse Distillation, EfficientAD, Uninformed Students)."""
