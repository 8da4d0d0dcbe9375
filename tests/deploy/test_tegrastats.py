import pytest

from deploy.tegrastats import parse_line, summarize

# ORIN_NX and NANO are real lines from public logs (rbonghi/jetson_stats issues #624 and #15). The
# Xavier NX, AGX Xavier and AGX Orin lines follow those boards' rail names and layout as NVIDIA's
# power documentation lists them; their values are made up for the test.
ORIN_NX = ("05-15-2025 18:30:28 RAM 6982/7620MB (lfb 5x1MB) SWAP 2640/16384MB (cached 202MB) CPU [97%@1984,95%@1984,"
           "95%@1984,91%@1984,88%@1984,93%@247] EMC_FREQ 18%@3199 GR3D_FREQ 84%@[713] NVENC 1%@115 NVDEC 40%@115 "
           "NVJPG off VIC 31%@115 APE 174 cv0@63.031C cpu@65.562C gpu@63.5C tj@65.562C VDD_IN 17946mW/15710mW "
           "VDD_CPU_GPU_CV 8896mW/7585mW VDD_SOC 3923mW/3515mW")
NANO = ("RAM 1462/3957MB (lfb 457x4MB) IRAM 0/252kB(lfb 252kB) CPU [43%@1036,44%@1036,36%@1036,34%@1036] "
        "EMC_FREQ 6%@1600 GR3D_FREQ 51%@307 NVDEC 192 APE 25 PLL@20.5C CPU@24.5C PMIC@100C GPU@22C AO@29.5C "
        "thermal@22.75C POM_5V_IN 3353/1616 POM_5V_GPU 450/61 POM_5V_CPU 613/2")
XAVIER_NX = ("RAM 2034/7771MB (lfb 1046x4MB) SWAP 0/3885MB (cached 0MB) CPU [2%@1190,1%@1190,0%@1190,0%@1190,off,off] "
             "EMC_FREQ 0% GR3D_FREQ 0% AO@36.5C GPU@36C PMIC@100C AUX@35.5C CPU@37.5C thermal@36.3C "
             "VDD_IN 4437/4437 VDD_CPU_GPU_CV 512/512 VDD_SOC 1354/1354")
AGX_XAVIER = ("RAM 1745/15692MB (lfb 3221x4MB) SWAP 0/7846MB (cached 0MB) CPU [5%@1190,3%@1190,3%@1190,7%@1190] "
              "EMC_FREQ 0% GR3D_FREQ 0% AO@44.5C GPU@46C Tboard@46C CPU@46C thermal@45.4C "
              "GPU 0/0 CPU 229/229 SOC 1378/1378 CV 0/0 VDDRQ 229/229 SYS5V 1919/1919")
AGX_ORIN = ("RAM 4722/30536MB (lfb 5434x4MB) SWAP 0/15268MB (cached 0MB) CPU [1%@729,0%@729] EMC_FREQ 0%@2133 "
            "GR3D_FREQ 62%@[1300,1300] VIC_FREQ 729 APE 233 CV0@-256C CPU@46.5C SOC2@43.1C GPU@44.3C "
            "VDD_GPU_SOC 7966mW/7966mW VDD_CPU_CV 1194mW/1194mW VIN_SYS_5V0 4225mW/4225mW VDDQ_VDD2_1V8AO 707mW/707mW")


@pytest.mark.parametrize("line, watts, gpu, emc", [
    (ORIN_NX, 17.946, 84.0, 18.0),        # the total input rail VDD_IN
    (NANO, 3.353, 51.0, 6.0),             # POM_5V_IN, no unit suffix
    (XAVIER_NX, 4.437, 0.0, 0.0),
    (AGX_XAVIER, (0 + 229 + 1378 + 0 + 229 + 1919) / 1000, 0.0, 0.0),  # no total rail: the rails summed
    (AGX_ORIN, (7966 + 1194 + 4225) / 1000, 62.0, 0.0),  # VDDQ is inside VIN_SYS_5V0
])
def test_parse_line_reads_the_total_input_power_and_loads(line, watts, gpu, emc):
    sample = parse_line(line)
    assert sample["power_w"] == pytest.approx(watts)
    assert sample["gpu_load"] == gpu and sample["emc_load"] == emc


def test_ram_is_not_a_rail_and_a_line_without_rails_is_none():
    assert parse_line("RAM 1462/3957MB (lfb 457x4MB) SWAP 0/3885MB CPU [43%@1036]") is None


def test_summarize_power_and_energy_per_image():
    samples = [{"power_w": 10.0, "gpu_load": 80.0}, {"power_w": 14.0, "gpu_load": 90.0}]
    out = summarize(samples, images=200, seconds=2.0)
    # mean 12 W over 2 s = 24 J for 200 images = 120 mJ per image
    assert out == {"mean_w": 12.0, "peak_w": 14.0, "samples": 2, "energy_per_image_mj": 120.0, "gpu_load_mean": 85.0}
    assert summarize([], 10, 1.0) == {}
